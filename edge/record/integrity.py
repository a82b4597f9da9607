"""The open event log checked every `record.log_check_s` seconds: PRAGMA quick_check.

Why: pages damaged in place under the running bin (a failing SD card writes garbage into the same
file) are invisible to the writer's connection. It serves those pages from its cache and folds its
WAL into the damaged file, so without this the damage shows only at the next start, which then sets
the whole file aside with every item sorted since.

How: on a thread of its own with a connection of its own, opened read-only for each check, so the
pages come from the file as it is on disk, not from the writer's cache. quick_check reads every
page (100,000 events, 55 MB: 77-138 ms from the page cache, 0.8-1.2 s from disk on the dev machine;
docs/reliability.md); Python's sqlite3 lets go of the GIL while it runs, so the sorting loop does
not wait for it.
A check that fails is acted on by the loop thread (tick): the file is set aside as
events.db.damaged-<UTC time> (the latched `log` fault, which stops nothing), a new log is opened and
the event log's journal, every event recorded since the last good check, is written into it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass

from ecosorter.edge.clock import SYSTEM_CLOCK, Clock
from ecosorter.edge.record.events import EventLog, damaged

log = logging.getLogger("ecosorter.events")

RETRY_S = 60.0  # a check put off (events waiting, space short) or inconclusive: tried again this soon


@dataclass
class Outcome:
    inode: int  # the file that was read
    mark: int  # the event log's journal number when the check began
    problem: str = ""  # quick_check's complaint, or the error that says the file is damaged
    unsure: str = ""  # could not tell (busy, I/O error, the file replaced meanwhile): try again later
    ms: float = 0.0


class LogCheck:
    def __init__(self, events: EventLog, every_s: float, clock: Clock = SYSTEM_CLOCK):
        self.events, self.every_s, self.clock = events, float(every_s), clock
        # opening the log ran a quick_check already (edge/record/events.py): the first is one period away
        self._due = clock.monotonic() + self.every_s
        self._thread: threading.Thread | None = None
        self._outcome: Outcome | None = None
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        self.checks = 0  # finished checks, for the tests and the benchmark
        self.failed = 0
        self.last: Outcome | None = None

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def tick(self) -> bool | None:
        """Every loop pass (RecordGuard.tick). None: nothing to act on; True/False: damage was found,
        and the events since the last good check were (not) all written into the new log."""
        if self._thread is not None:
            if self._thread.is_alive():
                return None
            self._thread = None
            return self._finish()
        if not self.enabled:
            return None
        now = self.clock.monotonic()
        if now < self._due and not self.events.journal_nearly_full():
            return None
        if not self.events.may_check():
            self._due = now + min(RETRY_S, self.every_s)
            return None
        self._due = now + self.every_s
        self.start()
        return None

    def start(self) -> None:
        """Begin a check now (on its thread)."""
        inode, mark = self.events.check_mark()
        self._thread = threading.Thread(target=self._run, args=(inode, mark), name="log-check", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float = 60.0) -> None:
        """Until the check under way (if any) has its answer; the next tick() acts on it."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, inode: int, mark: int) -> None:
        self._outcome = check_file(self.events.path, inode, mark, self._opened)

    def _opened(self, conn: sqlite3.Connection | None) -> None:
        with self._conn_lock:  # close() may interrupt a long check through it
            self._conn = conn

    def _finish(self) -> bool | None:
        out, self._outcome = self._outcome, None
        if out is None:
            return None
        self.checks += 1
        self.last = out
        if out.unsure:
            log.warning("event log check of %s inconclusive (%s); trying again in %.0f s", self.events.path,
                        out.unsure, min(RETRY_S, self.every_s))
            self._due = min(self._due, self.clock.monotonic() + min(RETRY_S, self.every_s))
            return None
        if not out.problem:
            self.events.checked(out.inode, out.mark)
            return None
        self.failed += 1
        log.error("event log %s damaged in place: %s", self.events.path, out.problem)
        return self.events.damaged_in_place(out.inode, f"damaged in place, found by the periodic check: {out.problem}")

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with self._conn_lock:
            if self._conn is not None:
                self._conn.interrupt()
        thread.join(timeout=10.0)
        self._thread = None


def check_file(path, inode: int, mark: int, opened=lambda conn: None) -> Outcome:
    """quick_check the file at `path`, if it is still `inode`, through a fresh read-only connection."""
    t0 = time.perf_counter()
    out = Outcome(inode, mark)
    conn = None
    try:
        if os.stat(path).st_ino != inode:
            out.unsure = "the file was replaced before the check"
            return out
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        opened(conn)
        conn.execute("PRAGMA cache_size=-256")  # pages are read once; keep the Pi's memory
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(20)")]
        if rows != ["ok"]:
            out.problem = "; ".join(rows)[:300]
    except sqlite3.Error as e:
        if damaged(e):
            out.problem = str(e)
        else:  # busy, interrupted, I/O: not a verdict on the file
            out.unsure = str(e)
    except OSError as e:
        out.unsure = e.strerror or str(e)
    finally:
        opened(None)
        if conn is not None:
            conn.close()
        out.ms = (time.perf_counter() - t0) * 1000
    try:
        if out.problem and os.stat(path).st_ino != inode:
            out.problem, out.unsure = "", "the file was replaced during the check"
    except OSError:
        out.problem, out.unsure = "", "the file was deleted during the check"
    return out
