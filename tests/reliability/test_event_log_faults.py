"""Issue 18 item 11: a damaged events.db is moved aside (kept for inspection, named with the time),
a fresh log records, a fault shows on the page and MQTT, and restarts lose nothing.
Before, the bin sorted, recorded nothing, and exited 3 at every systemd restart.
Real SQLite files, the real sorter, real Mosquitto, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecosorter.edge.record import Event, EventLog
from tests.conftest import SAMPLES
from tests.security.conftest import BIN, RunningSorter, event_ids, sorter_cfg, wait


def a_real_log(path: Path, n: int = 300) -> None:
    with EventLog(path) as log:
        for _ in range(n):
            log.append(Event("kaca", 0.9, {"kaca": 0.9}, False, 0, 0, True, 1, "x" * 64, {"total": 1.0}))


def damage(path: Path, shape: str) -> bytes:
    a_real_log(path)
    b = bytearray(path.read_bytes())
    if shape == "not-a-database":
        b = bytearray(b"not a database\n" * 200)
    elif shape == "pages":
        b[4096 * 2:4096 * 4] = os.urandom(8192)
    elif shape == "truncated":
        b = b[:len(b) // 2 + 100]
    elif shape == "header":
        b[16:24] = b"\xff" * 8
    path.write_bytes(bytes(b))
    return bytes(b)


def aside(state: Path) -> list[Path]:
    return sorted(p for p in state.glob("events.db.damaged-*") if not p.name.endswith(("-wal", "-shm")))


@pytest.mark.parametrize("shape", ["not-a-database", "pages", "truncated", "header"])
def test_a_damaged_log_is_set_aside_a_new_one_records_and_the_fault_is_shown(mosquitto, tmp_path, monkeypatch,
                                                                              shape):
    import paho.mqtt.client as mqtt

    state = tmp_path / "state"
    state.mkdir()
    bad = damage(state / "events.db", shape)
    machine_msgs: list[dict] = []
    states: list[dict] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"ecosorter/{BIN}/#", qos=1)
    c.on_message = lambda cl, u, m: (machine_msgs if m.topic.endswith("/machine") else states).append(
        json.loads(m.payload)) if m.topic.endswith(("/machine", "/state")) else None
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    try:
        with RunningSorter(sorter_cfg(state, mosquitto.port), monkeypatch, tmp_path) as bin7:
            assert wait(lambda: bin7.items >= 5)  # the fault stops nothing
            sorter = bin7.sorter
            assert sorter.machine.active("log")
            faults = sorter.board.snapshot()["machine"]["faults"]
            assert [f["name"] for f in faults] == ["log"] and "kept as events.db.damaged-" in faults[0]["detail"]
            assert wait(lambda: any(f["name"] == "log" for s in states for f in s.get("machine", {}).get("faults", [])))
            sorter.clear_fault("test")  # a person clears it: published as cleared on MQTT
            assert wait(lambda: any(m["name"] == "log" and m["state"] == "cleared" for m in machine_msgs))
            n = bin7.items
        assert sorter.events.unsaved == 0
    finally:
        c.loop_stop()
        c.disconnect()
    [kept] = aside(state)
    assert kept.read_bytes() == bad  # kept as it was, for inspection
    with EventLog(state / "events.db") as log:  # the new log holds every item sorted
        assert log.count() >= n
        faults = log.query("SELECT name, state FROM machine_log")
        assert [(r["name"], r["state"]) for r in faults if r["name"] == "log"] == [("log", "raised"), ("log", "cleared")]


def test_systemd_restarts_no_longer_lose_events(tmp_path):
    """`ecosorter run` on a damaged log exits 0 with every item recorded (was: exit 3, all lost),
    and the next start finds the new log sound: nothing set aside again, nothing lost."""
    state = tmp_path / "state"
    state.mkdir()
    damage(state / "events.db", "pages")
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    run = [sys.executable, "-m", "ecosorter.edge.cli", "run", "--simulate", "--no-status", "--max-items", "4",
           "--state-dir", str(state)]
    logs = []
    for _ in range(2):
        r = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        logs.append(r.stderr)
    assert "event log events.db was damaged" in logs[0] and "damaged" not in logs[1]
    assert len(aside(state)) == 1
    with EventLog(state / "events.db") as log:
        assert log.count() == 8


def test_a_log_damaged_under_the_running_bin_is_set_aside_and_recording_goes_on(tmp_path):
    from ecosorter.edge.config import load_config
    from ecosorter.edge.sorter import build_sorter

    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES), "camera.loop": True,
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0, "record.capture": "none"})
    state = tmp_path / "state"
    with build_sorter(cfg, state_dir=state) as sorter:
        sorter.run(max_items=3)
        path = state / "events.db"
        sorter.machine_log.record({"kind": "hold", "name": "resume", "compartment": None, "detail": ""},
                                  "raised", "", 0)  # the machine log's own connection is open now
        sorter.events.query("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(path, "r+b") as f:  # something scribbles over the file under the running bin
            f.seek(0)
            f.write(os.urandom(4096))
        sorter.events.query("PRAGMA cache_size=0")  # no cached pages: the next write reads the file
        sorter.run(max_items=8)
        assert sorter.machine.active("log") and len(aside(state)) == 1
        assert sorter.events.count() >= 5 and not sorter.events.pending
        sorter.machine_log.record({"kind": "hold", "name": "lid", "compartment": None, "detail": ""}, "raised", "", 0)
    with EventLog(state / "events.db") as log:  # the machine log followed the event log to the new file
        assert [r["name"] for r in log.query("SELECT name FROM machine_log")][-1:] == ["lid"]


def test_events_after_a_mid_run_damage_still_reach_mqtt(mosquitto, tmp_path, monkeypatch):
    state = tmp_path / "state"
    with event_ids(mosquitto.port) as got, \
            RunningSorter(sorter_cfg(state, mosquitto.port, **{"record.capture": "none"}), monkeypatch,
                          tmp_path) as bin7:
        events = bin7.sorter.events
        assert wait(lambda: len(got) >= 3)  # the outbox drain has its connection open
        events.query("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(state / "events.db", "r+b") as f:
            f.write(os.urandom(4096))
        events.query("PRAGMA cache_size=0")
        assert wait(lambda: len(aside(state)) == 1)
        n = bin7.items
        assert wait(lambda: bin7.items >= n + 3)
        new = [r["id"] for r in events.query("SELECT id FROM events ORDER BY seq")]
        assert len(new) >= 3
        assert wait(lambda: set(new) <= set(got)), f"{len(set(new) - set(got))} new events not published"
