"""`fleet status` against a broker holding many bins' retained state (more than Mosquitto's in-flight
window of 20), and against messages that are not a bin's."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.fleet.conftest import ECOSORTER

pytestmark = pytest.mark.broker


def test_status_sees_every_retained_bin_and_ignores_what_is_not_a_bin(mosquitto):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    for i in range(150):
        state = {"model": {"sha256": f"{i:064x}", "version": 2}, "items_today": i, "uncertain_share": 0.1,
                 "machine": {"state": "fault" if i == 7 else "ready", "holds": [], "faults": [
                     {"name": "jam", "kind": "fault", "reason_en": "Jammed: chute", "action_en": "Open the lid"}]
                     if i == 7 else []},
                 "compartments": [{"index": 0, "count": i, "full": i == 9}], "totals": {}, "today": {}}
        c.publish(f"ecosorter/b{i:03d}/state", json.dumps(state), qos=1, retain=True).wait_for_publish(5)
        c.publish(f"ecosorter/b{i:03d}/availability", "online" if i % 10 else "offline", qos=1,
                  retain=True).wait_for_publish(5)
    c.publish("ecosorter/bad id!/state", b"{}", qos=1, retain=True).wait_for_publish(5)
    c.publish("ecosorter/b999/state", b"[not json", qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()
    r = subprocess.run([*ECOSORTER, "fleet", "status", "--json", "--broker", f"127.0.0.1:{mosquitto.port}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    bins = {b["bin_id"]: b for b in json.loads(r.stdout)["bins"]}
    assert len([b for b in bins.values() if b["model_sha256"]]) == 150
    assert "bad id!" not in bins and bins["b999"]["model_sha256"] is None  # kept out, not a crash
    assert [b for b, x in bins.items() if x["online"] is False] == [f"b{i:03d}" for i in range(0, 150, 10)]
    assert bins["b007"]["faults"][0]["reason"] == "Jammed: chute" and bins["b009"]["fill"][0]["full"] is True
    r = subprocess.run([*ECOSORTER, "fleet", "status", "--bins", "b00*", "--broker",
                        f"127.0.0.1:{mosquitto.port}"], capture_output=True, text=True, timeout=60)
    assert "10 bins, 9 online" in r.stdout and "fault jam: Jammed: chute" in r.stdout
    # the full compartment as printed on the bin (index 0 is "1"), as the page and `run` show it
    assert next(x for x in r.stdout.splitlines() if x.startswith("b009")).split()[6] == "1"


def test_an_unreachable_broker_is_named():
    r = subprocess.run([*ECOSORTER, "fleet", "status", "--broker", "127.0.0.1:1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "broker 127.0.0.1:1: cannot connect" in r.stderr


def test_status_logs_in_as_the_bins_config_says_and_a_wrong_password_is_named(tmp_path):
    import getpass
    import shutil
    import socket
    import time

    import paho.mqtt.client as mqtt

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwd"), "fleet", "s3cret-fleet"], check=True)
    # `user`: started as root, Mosquitto would read the password file as user mosquitto, which cannot
    # enter pytest's private temporary folder (as anyone else, the line is ignored)
    (tmp_path / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                                     f"password_file {tmp_path / 'passwd'}\nuser {getpass.getuser()}\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp_path / "m.conf")],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.username_pw_set("fleet", "s3cret-fleet")
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.publish("site/bin1/availability", "online", qos=1, retain=True).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        secret = tmp_path / "mqtt_password"
        secret.write_text("s3cret-fleet\n")
        secret.chmod(0o600)
        cfg = tmp_path / "bins.toml"
        cfg.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nusername = "fleet"\n'
                       f'password_file = "{secret}"\ntopic_prefix = "site"\n')
        r = subprocess.run([*ECOSORTER, "fleet", "status", "--json", "--config", str(cfg)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert [b["bin_id"] for b in json.loads(r.stdout)["bins"]] == ["bin1"]
        secret.write_text("wrong\n")
        r = subprocess.run([*ECOSORTER, "fleet", "status", "--config", str(cfg)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and f"broker 127.0.0.1:{port}: refused the login" in r.stderr, r.stderr
    finally:
        broker.terminate()
        broker.wait(10)


def test_forget_removes_a_retired_bin_and_its_home_assistant_device(mosquitto, tmp_path):
    """A retired or renamed bin (e.g. after fixing two bins sharing 'ecosorter-1') stayed on the broker
    as retained state, last will and HA discovery: `fleet status` listed it offline for ever and a
    rollout waited for it. `fleet forget` removes them; an online bin is refused (unless --force); a bin
    whose id starts with the forgotten one's ('old-2' beside 'old') keeps everything."""
    import paho.mqtt.client as mqtt

    from ecosorter.edge.config import load_config
    from ecosorter.edge.record.events import EventLog
    from ecosorter.edge.record.mqtt import MqttLink
    from tests.fleet.conftest import wait
    from tests.security.conftest import retained_on

    cfg = load_config(overrides={"mqtt.enabled": True, "mqtt.host": "127.0.0.1", "mqtt.port": mosquitto.port}).mqtt
    links = {}
    for b in ("old-2", "old"):
        EventLog(tmp_path / f"{b}.db").close()
        links[b] = MqttLink(cfg, b, tmp_path / f"{b}.db", {"kaca": "Kaca"}).start()
        assert links[b].connected.wait(20)
        links[b].publish_state({"today": {"counts": {"kaca": 1}}})
    for b in links:  # the state publishes have reached the broker before "old" closes (was: a 1 s sleep)
        assert wait(lambda b=b: retained_on(mosquitto.port, f"ecosorter/{b}/state") is not None, 20), b
    links["old"].close()  # retired: its retained state, "offline" and discovery stay
    broker = ["--broker", f"127.0.0.1:{mosquitto.port}"]

    def fleet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*ECOSORTER, "fleet", *args, *broker], capture_output=True, text=True, timeout=60)

    def retained() -> set[str]:
        seen: set[str] = set()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.on_message = lambda cl, u, m: seen.add(m.topic) if m.retain and m.payload else None
        c.connect("127.0.0.1", mosquitto.port)
        c.subscribe([("ecosorter/#", 0), ("homeassistant/#", 0)])
        c.loop_start()
        wait(lambda: any("/ecosorter_old-2/" in t for t in seen), 10)
        # the retained messages follow the SUBACK; a QoS 1 round trip after them orders after all of them
        c.publish("probe/none", b"x", qos=1).wait_for_publish(10)
        c.loop_stop()
        c.disconnect()
        return seen

    try:
        before = retained()
        assert {"ecosorter/old/state", "ecosorter/old/availability"} <= before
        assert any("/ecosorter_old/" in t for t in before)
        r = fleet("forget", "old-2")
        assert r.returncode == 2 and "old-2 is online: stop it first" in r.stderr, r.stderr
        r = fleet("forget", "old")
        n = sum(1 for t in before if "/ecosorter_old/" in t)
        assert r.returncode == 0 and f"forgot old: retained state and availability, {n} Home Assistant" in r.stdout, \
            r.stdout + r.stderr
        after = retained()
        assert not [t for t in after if "/old/" in t or "/ecosorter_old/" in t], after
        assert "ecosorter/old-2/state" in after and any("/ecosorter_old-2/" in t for t in after)
        status = json.loads(fleet("status", "--json").stdout)["bins"]
        assert [b["bin_id"] for b in status] == ["old-2"]
        r = fleet("forget", "old")
        assert r.returncode == 2 and "no bin 'old' on 127.0.0.1" in r.stderr and "(bins there: old-2)" in r.stderr
        r = fleet("forget", "old-2", "--force")  # online: a person who knows better
        assert r.returncode == 0 and "forgot old-2" in r.stdout, r.stdout + r.stderr
    finally:
        links["old-2"].close()
