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


def test_an_unreachable_broker_is_named():
    r = subprocess.run([*ECOSORTER, "fleet", "status", "--broker", "127.0.0.1:1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "broker 127.0.0.1:1: cannot connect" in r.stderr
