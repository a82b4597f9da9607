"""A full disk loses no event that was printed and routed: kill -9, SIGTERM, a flag on a full disk,
and a non-zero exit naming the cause when events truly cannot be saved. Real tmpfs, real SQLite."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from tests.conftest import SAMPLES
from tests.security.conftest import wait

SORTER = r"""
import sys
from pathlib import Path
from ecosorter.edge.cli import run_until_signalled
from ecosorter.edge.config import load_config
from ecosorter.edge.sorter import build_sorter
cfg = load_config(overrides={"camera.source": "folder", "camera.device": sys.argv[2], "camera.loop": True,
                             "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0, "record.capture": "all",
                             "record.capture_quota_mb": 100.0, "record.disk_reserve_mb": 0.2})
with build_sorter(cfg, state_dir=Path(sys.argv[1])) as s:
    run_until_signalled(s, on_event=lambda e: print(e.id, flush=True))  # printed = routed
sys.exit(3 if s.events.unsaved else 0)
"""


@contextlib.contextmanager
def running(*args: str):
    """A sorter process; yields it and the lines it printed so far; killed if still running at the end."""
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.strip() for line in p.stdout), daemon=True).start()
    try:
        yield p, lines
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def stored(state) -> set[str]:
    con = sqlite3.connect(state / "events.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {r[0] for r in con.execute("SELECT id FROM events")}
    finally:
        con.close()


def disk_full(state) -> bool:
    st = os.statvfs(state)
    return st.f_bavail * st.f_frsize < 100_000


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_full_disk_loses_no_printed_event_on_kill_9_or_sigterm(small_disk, sig):
    with running("-c", SORTER, str(small_disk), str(SAMPLES)) as (p, printed):
        # photos fill the disk, then keep being evicted for events: go well past that point
        assert wait(lambda: len(printed) >= 40 and disk_full(small_disk), 180)
        n = len(printed)
        assert wait(lambda: len(printed) >= n + 60, 180)
        p.send_signal(sig)
        code = p.wait(60)
    err = p.stderr.read()
    assert "evicted" in err  # photos made room for events
    assert set(printed) <= stored(small_disk), f"lost {len(set(printed) - stored(small_disk))} events"
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), err[-2000:]
    if sig == signal.SIGTERM:
        assert "events unwritten" not in err


def test_events_that_truly_cannot_be_saved_make_a_non_zero_exit_naming_the_cause(small_disk, tmp_path):
    # no photos at all: with some captured (a random 5% of confident items) there would be room to make
    cfg = tmp_path / "config.toml"
    cfg.write_text('[record]\ncapture = "none"\n')
    with running("-m", "ecosorter.edge.cli", "run", "--simulate", "--loop", "--no-status", "--config", str(cfg),
                 "--state-dir", str(small_disk)) as (p, lines):
        assert wait(lambda: sum(ln.startswith("[") for ln in lines) >= 2, 120)
        fill(small_disk / "filler")  # something else takes the whole disk: nothing of ours to evict
        n = sum(ln.startswith("[") for ln in lines)
        assert wait(lambda: sum(ln.startswith("[") for ln in lines) >= n + 3, 120)  # sorting goes on
        p.send_signal(signal.SIGTERM)
        code = p.wait(60)
    err = p.stderr.read()
    assert code == 3, err[-2000:]
    assert "events could not be saved" in err and f"the disk holding {small_disk} is full" in err


def fill(path) -> None:
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_an_unwritable_state_folder_is_a_clear_error_at_start(small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        r = subprocess.run([sys.executable, "-m", "ecosorter.edge.cli", "run", "--simulate", "--no-status",
                            "--state-dir", str(small_disk / "state")], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], capture_output=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"state folder {small_disk / 'state'} is not writable (Read-only file system)" in r.stderr


def test_a_flag_command_on_a_full_disk_is_answered_not_a_crash(small_disk):
    from ecosorter.edge.commands import CommandProcessor, callbacks_for
    from ecosorter.edge.config import load_config
    from ecosorter.edge.sorter import build_sorter

    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES), "camera.loop": True,
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0, "record.capture": "all",
                                 "record.disk_reserve_mb": 0.0, "commands.trust_broker_for": ["flag"]})
    with build_sorter(cfg, state_dir=small_disk) as sorter:
        sorter.run(max_items=120)
        fill(small_disk / "filler")  # whatever room is left, taken
        worker = CommandProcessor(cfg, sorter.store, small_disk, callbacks_for(sorter))
        r = worker.handle(json.dumps({"action": "flag", "id": sorter.last_event_id}).encode())
        assert r["action"] == "flag" and isinstance(r["ok"], bool) and "internal error" not in r.get("error", "")
        assert sorter.run(max_items=122).items == 122  # and it sorts on


def test_the_reserve_file_is_released_when_nothing_else_makes_room_and_comes_back(small_disk, caplog):
    from ecosorter.edge.record import Event, EventLog

    def event() -> Event:
        return Event("kaca", 0.9, {"kaca": 0.9}, False, 0, 0, True, 1, "x" * 64, {"total": 1.0})

    log = EventLog(small_disk / "events.db", reserve_bytes=200_000)
    reserve = small_disk / ".disk-reserve"
    assert reserve.stat().st_size == 200_000  # real blocks, taken at start
    fill(small_disk / "filler")  # another program fills the disk; no photos to evict
    written = [event() for _ in range(150)]
    assert all(log.append(ev) for ev in written)  # committed, not waiting in memory
    assert not reserve.exists() and "released the 195 kB reserve" in caplog.text
    (small_disk / "filler").unlink()  # space again: the reserve is taken back (at most once a minute)
    log._reserve_t = -1e9
    assert log.append(event()) and reserve.stat().st_size == 200_000
    log.close()
    assert log.unsaved == 0 and {e.id for e in written} <= stored(small_disk)
