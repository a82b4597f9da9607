"""Disk full, read-only state folder, deleted database: events committed are never lost,
photo capture degrades first, sorting goes on and the fault is reported."""

from __future__ import annotations

import subprocess

from ecosorter.edge.config import load_config
from ecosorter.edge.sorter import build_sorter
from tests.conftest import SAMPLES


def cfg(**over):
    return load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES), "camera.loop": True,
                                  "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                  "record.capture": "all", "record.capture_quota_mb": 100.0, **over})


def rows(sorter) -> int:
    return sorter.events.count()


def test_disk_full_drops_photos_first_keeps_events_and_recovers(small_disk, caplog):
    decided = []
    with build_sorter(cfg(), state_dir=small_disk) as sorter:
        sorter.run(max_items=80, on_event=decided.append)  # ~25 kB photos: 1 MB fills up
        assert "disk full: evicted" in caplog.text  # the disk filled; photos were evicted for events,
        assert sorter.events.pending == []  # so no event waits in memory
        assert len(decided) == 80  # it kept sorting
        photos = list((small_disk / "captures").glob("*/*.jpg"))
        for p in photos:  # an operator frees space
            p.unlink()
        sorter.run(max_items=82, on_event=decided.append)
        stored = {r["id"] for r in sorter.events.query("SELECT id FROM events")}
    assert {e.id for e in decided} <= stored  # every decided item is in the log


def test_read_only_state_folder_then_writable_again(small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    decided = []
    try:
        with build_sorter(cfg(**{"record.capture": "uncertain"}), state_dir=small_disk) as sorter:
            sorter.run(max_items=5, on_event=decided.append)  # decided, but held: nothing sorted unrecorded
            assert sorter.machine.active("disk") and not any(e.routed_ok for e in decided)
            health = sorter.board.snapshot()["health"]["disk"]
            assert health["ok"] is False and "read-only" in health["detail"].lower().replace("readonly", "read-only")
            assert len(sorter.events.pending) == 5
            subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
            sorter.run(max_items=6, on_event=decided.append)
            assert sorter.board.snapshot()["health"]["disk"]["ok"] is True and not sorter.machine.active("disk")
            stored = [r["id"] for r in sorter.events.query("SELECT id FROM events ORDER BY seq")]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], capture_output=True)
    assert stored == [e.id for e in decided]


def test_deleted_database_is_recreated_and_reported(tmp_path, caplog):
    with build_sorter(cfg(**{"record.capture": "none"}), state_dir=tmp_path) as sorter:
        sorter.run(max_items=2)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"events.db{suffix}").unlink(missing_ok=True)
        sorter.run(max_items=5)
        # the 2 items before the deletion too: the new log gets the events since the last good check
        assert (tmp_path / "events.db").exists() and rows(sorter) == 5
    assert "was deleted or replaced; starting a new one" in caplog.text
