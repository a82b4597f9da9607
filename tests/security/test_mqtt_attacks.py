"""Attacks on the command topic of a real Mosquitto, against the real sorter loop running in a thread.

Each test is one attack from issue #12; it asserts both the refusal (the reply names what is wrong)
and that the bin kept sorting and petting systemd's watchdog while it was attacked.
"""

from __future__ import annotations

import json
import time

import pytest

from ecosorter.edge.model.store import ModelStore
from ecosorter.edge.security import new_keypair, sign_command
from tests.security.conftest import (
    BIN,
    Attacker,
    RunningSorter,
    Server,
    retained_on,
    sha,
    signed,
    sorter_cfg,
    versioned_model,
    wait,
)

pytestmark = pytest.mark.broker
HEX = "ab" * 32


def test_crash_payloads_are_refused_naming_the_field_and_sorting_goes_on(mosquitto, tmp_path, monkeypatch, keys):
    attacks = [
        ({"action": "install_model", "url": 123, "sha256": HEX}, "install_model.url: must be a string"),
        ({"action": "install_model", "file": [1], "sha256": HEX}, "install_model.file: must be a string"),
        ({"action": "install_model", "file": "m.tflite", "sha256": 5}, "install_model.sha256: must be a string"),
        ({"action": ["flag"]}, "action 'list' unknown"),
        ({"action": "flag", "id": {"$ne": 1}}, "flag.id: must be a string"),
        ({"action": "flag", "id": "abc", "extra": 1}, "unknown key 'extra'"),
        ({"action": "label", "id": "abc", "label": "<img src=x onerror=alert(1)>"}, "label.label"),
        ({"action": "rollback_model"}, "rollback_model needs 'sha256'"),
        (b"[" * 100_000, "longer than 4096"),
        (b"{\"action\": \"flag\", \"id\": NaN}", "NaN is not a number"),
        (b"\xff\xfe", "not JSON"),
        ({"action": "flag", "id": "abc", "ts": 1, "nonce": "x"}, "a signed command needs"),
    ]
    cfg = sorter_cfg(tmp_path, mosquitto.port, **{"model.public_keys": [keys[1]]})
    attacker = Attacker(mosquitto.port)
    with RunningSorter(cfg, monkeypatch, tmp_path) as bin7:
        assert wait(lambda: bin7.items >= 2)
        before, pets = bin7.items, bin7.watchdog
        for payload, _ in attacks:
            attacker.send(payload)
        for n, (_, why) in enumerate(attacks, 1):
            r = attacker.result(n)
            assert r["ok"] is False and why in r["error"], (why, r)
        assert wait(lambda: bin7.items >= before + 5)  # still sorting ...
        assert bin7.watchdog > pets and bin7.thread.is_alive()  # ... and still alive for systemd
    attacker.close()


def test_a_retained_command_is_ignored_and_cleared_so_restarts_survive(mosquitto, tmp_path, monkeypatch, keys):
    attacker = Attacker(mosquitto.port)
    poison = {"action": "install_model", "file": [1], "sha256": HEX}
    attacker.send(poison, retain=True)
    assert retained_on(mosquitto.port, f"ecosorter/{BIN}/cmd") == json.dumps(poison).encode()
    cfg = sorter_cfg(tmp_path, mosquitto.port, **{"model.public_keys": [keys[1]]})
    for _life in range(2):  # what systemd's restarts would do
        with RunningSorter(cfg, monkeypatch, tmp_path) as bin7:
            assert wait(lambda: bin7.items >= 3)
        monkeypatch.undo()
        (tmp_path / "notify.sock").unlink()
    assert attacker.result(1) == {"ok": False, "error": "retained command ignored and cleared"}
    assert retained_on(mosquitto.port, f"ecosorter/{BIN}/cmd") is None  # gone from the broker
    assert len(attacker.results) == 1  # the second life never saw it
    attacker.close()


def test_unsigned_forged_stale_replayed_and_downgrade_installs_are_refused(mosquitto, tmp_path, monkeypatch, keys):
    private, public = keys
    state = tmp_path / "state"
    store = ModelStore(state)
    store.incoming.mkdir(parents=True)
    v1, v2, v3 = (versioned_model(store.incoming, v) for v in (1, 2, 3))
    store.install(v2, allow_unsigned=True)  # the bin runs version 2
    cfg = sorter_cfg(state, mosquitto.port, **{"model.public_keys": [public]})
    attacker = Attacker(mosquitto.port)
    good = signed(private, "install_model", file=v3.name, sha256=sha(v3))
    cases = [
        ({"action": "install_model", "file": v3.name, "sha256": sha(v3)}, "unsigned command"),
        (sign_command(new_keypair()[0], "install_model", {"file": v3.name, "sha256": sha(v3)}, BIN),
         "does not verify"),
        (sign_command(private, "install_model", {"file": v3.name, "sha256": sha(v3)}, "bin8"), "not this bin"),
        (sign_command(private, "install_model", {"file": v3.name, "sha256": sha(v3)}, BIN, ts=time.time() - 3600),
         "stale command"),
        ({**good, "sha256": sha(v1)}, "does not verify"),  # a signed command with a swapped argument
        (signed(private, "install_model", file=v1.name, sha256=sha(v1)), "downgrade refused"),
        ({"action": "rollback_model", "sha256": sha(v1)}, "unsigned command"),
        (good, None),
        (good, "already used: replay refused"),
    ]
    with RunningSorter(cfg, monkeypatch, tmp_path) as bin7:
        for n, (cmd, why) in enumerate(cases, 1):
            attacker.send(cmd)
            r = attacker.result(n)
            if why is None:
                assert r["ok"] is True and r["version"] == 3, r
                assert wait(lambda: bin7.sorter.model.sha256 == sha(v3))  # swapped by the loop
            else:
                assert r["ok"] is False and why in r["error"], (why, r)
        assert bin7.sorter.model.sha256 == sha(v3)
        # a signed rollback naming the previous model is the one way down
        attacker.send(signed(private, "rollback_model", sha256=sha(v1)))
        assert "rollback refused" in attacker.result(len(cases) + 1)["error"]
        attacker.send(signed(private, "rollback_model", sha256=sha(v2)))
        assert attacker.result(len(cases) + 2)["ok"] is True
        assert wait(lambda: bin7.sorter.model.sha256 == sha(v2))
        assert bin7.items > 0
    monkeypatch.undo()
    (tmp_path / "notify.sock").unlink()
    with RunningSorter(cfg, monkeypatch, tmp_path):  # after a restart the nonce is still remembered
        attacker.send(good)
        assert "already used" in attacker.result(len(cases) + 3)["error"]
    attacker.close()


def test_without_a_key_remote_install_is_off_and_only_listed_actions_trust_the_broker(mosquitto, tmp_path,
                                                                                        monkeypatch, keys):
    cfg = sorter_cfg(tmp_path, mosquitto.port, **{"commands.trust_broker_for": ["flag", "label"]})
    attacker = Attacker(mosquitto.port)
    with RunningSorter(cfg, monkeypatch, tmp_path) as bin7:
        assert wait(lambda: bin7.sorter.last_event_id != "")
        event_id = bin7.sorter.last_event_id
        attacker.send(signed(keys[0], "install_model", file="m.tflite", sha256=HEX))
        attacker.send({"action": "rollback_model", "sha256": HEX})
        attacker.send({"action": "clear_fault", "by": "someone"})
        attacker.send({"action": "flag", "id": event_id})
        attacker.send({"action": "label", "id": event_id, "label": "kaca", "by": "ha"})
        attacker.send({"action": "label", "id": event_id, "label": "sampah"})
        assert "remote install_model is off" in attacker.result(1)["error"]
        assert "remote rollback_model is off" in attacker.result(2)["error"]
        assert "clear_fault must be signed but no key is configured" in attacker.result(3)["error"]
        assert attacker.result(4) == {"action": "flag", "ok": True, "id": event_id, "flagged": True}
        assert attacker.result(5) == {"action": "label", "ok": True, "id": event_id, "label": "kaca"}
        assert "'sampah' is not one of this model's labels" in attacker.result(6)["error"]
        assert bin7.sorter.events.query("SELECT true_label, labeled_by FROM events WHERE id = ?",
                                        (event_id,))[0][:] == ("kaca", "ha")
    attacker.close()


def test_a_flood_of_1000_installs_is_rate_limited_while_sorting_and_the_watchdog_go_on(mosquitto, tmp_path,
                                                                                      monkeypatch, keys):
    private, public = keys
    state = tmp_path / "state"
    store = ModelStore(state)
    store.incoming.mkdir(parents=True)
    v3 = versioned_model(store.incoming, 3)
    cfg = sorter_cfg(state, mosquitto.port, **{"model.public_keys": [public]})
    flood = [json.dumps(signed(private, "install_model", file=v3.name, sha256=sha(v3))).encode()
             for _ in range(1000)]
    attacker = Attacker(mosquitto.port)
    with RunningSorter(cfg, monkeypatch, tmp_path) as bin7:
        assert wait(lambda: bin7.items >= 2)
        commands = bin7.sorter.commands
        before, pets = bin7.items, bin7.watchdog
        for payload in flood:
            attacker.client.publish(f"ecosorter/{BIN}/cmd", payload, qos=1)
        assert wait(lambda: commands.dropped + commands.queue.qsize() + commands.handled >= 1000, 60)
        assert commands.dropped >= 1000 - 2 * cfg.commands.queue_size  # bounded: the rest never queued
        assert wait(lambda: commands.queue.qsize() == 0, 120)  # the accepted few are worked off
        assert bin7.items > before and bin7.watchdog > pets  # sorting and petting went on
        assert bin7.sorter.model.sha256 == sha(v3)  # the first one was installed; its copies did no harm
        print(f"\nflood of 1000: {commands.handled} handled, {commands.dropped} dropped; "
              f"{bin7.items - before} items sorted and {bin7.watchdog - pets} watchdog pings meanwhile")
    attacker.close()


def test_slow_drip_download_is_cut_off_while_sorting_and_the_watchdog_go_on(mosquitto, tmp_path, monkeypatch, keys):
    private, public = keys

    def drip(h) -> None:  # a byte every 0.5 s for as long as the client listens
        h.send_response(200)
        h.send_header("Content-Length", "1000000")
        h.end_headers()
        for _ in range(400):
            h.wfile.write(b"\0")
            h.wfile.flush()
            time.sleep(0.5)

    def to_ftp(h) -> None:
        h.send_response(302)
        h.send_header("Location", "ftp://127.0.0.1/model.tflite")
        h.end_headers()

    web = Server({"/slow.tflite": drip, "/redirect": to_ftp})
    cfg = sorter_cfg(tmp_path, mosquitto.port, **{
        "model.public_keys": [public], "model.download_hosts": [f"127.0.0.1:{web.port}"],
        "model.allow_http": True, "model.download_timeout_s": 4.0})
    attacker = Attacker(mosquitto.port)
    incoming = tmp_path / "models" / "incoming"
    with RunningSorter(cfg, monkeypatch, tmp_path) as bin7:
        attacker.send(signed(private, "install_model", url=web.url("/slow.tflite"), sha256=HEX))
        assert wait(lambda: any(p.suffix == ".download" for p in incoming.glob("*")))  # it is downloading ...
        items, pets = bin7.items, bin7.watchdog
        r = attacker.result(1)
        assert r["ok"] is False and "longer than model.download_timeout_s = 4 s" in r["error"]
        assert bin7.items > items and bin7.watchdog > pets  # ... while the loop sorted and petted
        attacker.send(signed(private, "install_model", url=web.url("/redirect"), sha256=HEX))
        r = attacker.result(2)
        assert r["ok"] is False and "redirect to 'ftp://127.0.0.1/model.tflite' leaves" in r["error"]
    assert list(incoming.glob("*")) == []  # nothing refused is left behind
    web.close()
    attacker.close()
