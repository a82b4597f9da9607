"""What the periodic event-log check costs (edge/record/integrity.py, record.log_check_s), against one
event append (a commit with fsync, what the loop pays per item) measured in the same run:

    python -m benchmarks.log_check [--events 100000] [--json docs/log_check.json]

`python -m benchmarks` runs it too, on a LOG_CHECK_EVENTS (20,000) event log, into docs/performance.json.

Reported (medians of --repeat):
  - one append to the log, the baseline (median and max of 40 x --repeat, half before the checks, half after);
  - PRAGMA quick_check through a fresh read-only connection, as the check runs it: with the file in
    the OS page cache ("warm", a bin whose log was recently read) and evicted from it first
    (posix_fadvise DONTNEED: "cold", every page read from the disk, as on a Pi whose RAM holds
    other things); each as a ratio to one append;
  - appends while a cold check runs on its thread (does the loop wait for it?);
  - the recovery on the loop thread when a check fails with a full journal (set aside, a new log, the
    journal of JOURNAL_MAX events written), and the journal's memory (tracemalloc).
The log is a real EventLog file filled with events shaped like the bin's (7 probabilities, latencies).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchmarks.__main__ import cpu_name
from ecosorter.edge.clock import SYSTEM_CLOCK
from ecosorter.edge.record import Event, EventLog
from ecosorter.edge.record.events import JOURNAL_MAX
from ecosorter.edge.record.integrity import LogCheck, check_file

# `python -m benchmarks` measures a log this size (about 11 MB, some 25 s of its run on 2 shared cores); the 100,000-event
# figures docs/reliability.md quotes come from this module run alone (its default)
LOG_CHECK_EVENTS = 20_000
LABELS = ("kaca", "kardus", "kertas", "khusus", "logam", "organik", "plastik")


def an_event(i: int) -> Event:
    label = LABELS[i % 7]
    return Event(label, 0.93, {lb: round(0.93 if lb == label else 0.07 / 6, 4) for lb in LABELS}, False, i % 7,
                 i % 7, True, 5, "ab" * 32, {"preprocess": 1.2, "inference": 31.0, "route": 910.0, "total": 1043.0},
                 bin_id="bin-01", image=f"captures/2026-12-07/{i:08d}.jpg", source_name="camera")


def evict(path: Path) -> None:
    """Drop the file's pages from the OS cache (clean pages only: it was fsynced)."""
    for p in (path, Path(f"{path}-wal")):
        if p.exists():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure(events: int = 100_000, repeat: int = 5, folder: Path | None = None) -> dict:
    quiet = logging.getLogger("ecosorter.events")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the damage and the recovery it measures are meant: no log lines
    try:
        return _measure(events, repeat, folder)
    finally:
        quiet.setLevel(level)


def _measure(events: int, repeat: int, folder: Path | None) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="log-check-", dir=folder)
    path = Path(tmp.name) / "events.db"
    log = EventLog(path)
    try:
        t0 = time.perf_counter()
        for start in range(0, events, 10_000):  # in batches, through the log's own write path
            log.pending.extend(an_event(i) for i in range(start, min(events, start + 10_000)))
            assert log.retry(), log.error
        fill_s = time.perf_counter() - t0
        log.query("PRAGMA wal_checkpoint(TRUNCATE)")
        log.journal.clear()
        file_mb = path.stat().st_size / 1e6

        def appends(n: int) -> list[float]:
            out = []
            for i in range(n):
                t = time.perf_counter()
                assert log.append(an_event(events + i))
                out.append((time.perf_counter() - t) * 1000)
            return out

        alone = appends(20 * repeat)  # the baseline: half now, half after the checks (the disk's mood changes)
        inode = os.stat(path).st_ino

        def check(cold: bool) -> float:
            if cold:
                evict(path)
            out = check_file(path, inode, 0)
            assert not out.problem and not out.unsure, out
            return out.ms

        check(False)  # warm-up: the file in the page cache
        warm = [check(False) for _ in range(repeat)]
        cold = [check(True) for _ in range(repeat)]

        # the loop keeps appending while a cold check runs on its own thread
        during: list[float] = []
        check_ms: list[float] = []
        for _ in range(repeat):
            evict(path)
            lc = LogCheck(log, 0.0, SYSTEM_CLOCK)
            lc.start()
            while lc.running():
                during += appends(1)
            lc.wait()
            lc.tick()
            assert lc.last is not None and not lc.last.problem, lc.last
            check_ms.append(lc.last.ms)

        alone += appends(20 * repeat)
        append_ms = statistics.median(alone)

        # memory of a full journal, and the recovery when a check fails with it
        tracemalloc.start()
        kept = [an_event(i) for i in range(JOURNAL_MAX)]
        journal_mb = tracemalloc.get_traced_memory()[0] / 1e6
        tracemalloc.stop()
        del kept
        log.journal.clear()
        appends(JOURNAL_MAX)
        with open(path, "r+b") as f:  # real damage, in place: 8 pages in the middle
            f.seek(os.path.getsize(path) // 2 // 4096 * 4096)
            f.write(random.Random(1).randbytes(8 * 4096))
        lc = LogCheck(log, 0.0, SYSTEM_CLOCK)
        lc.start()
        lc.wait()
        t = time.perf_counter()
        written = lc.tick()
        recover_ms = (time.perf_counter() - t) * 1000
        assert written is True and lc.failed == 1 and log.count() == JOURNAL_MAX, (written, lc.last)
    finally:
        log.close()
        tmp.cleanup()

    warm_ms, cold_ms = statistics.median(warm), statistics.median(cold)
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version, "date": time.strftime("%Y-%m-%d"),
        "events": events, "file_mb": round(file_mb, 1), "fill_s": round(fill_s, 1),
        "repeat": repeat,
        "append_ms": round(append_ms, 3), "append_max_ms": round(max(alone), 3), "appends": len(alone),
        "quick_check_warm_ms": round(warm_ms, 3), "quick_check_cold_ms": round(cold_ms, 3),
        "warm_over_append": round(warm_ms / append_ms, 1), "cold_over_append": round(cold_ms / append_ms, 1),
        "appends_during_checks": len(during),
        "append_during_check_ms": {"median": round(statistics.median(during), 3) if during else None,
                                   "max": round(max(during), 3) if during else None},
        "check_on_thread_ms": round(statistics.median(check_ms), 1),
        "journal_max": JOURNAL_MAX, "journal_full_mb": round(journal_mb, 2),
        "recover_with_full_journal_ms": round(recover_ms, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="events in the log (default 100000)")
    ap.add_argument("--repeat", type=int, default=5, help="timed checks per measure (default 5)")
    ap.add_argument("--dir", type=Path, default=None, help="where the log is written (default: the temp folder; "
                                                           "it must be a real disk for the cold figure)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    r = measure(args.events, args.repeat, args.dir)
    text = json.dumps(r, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
