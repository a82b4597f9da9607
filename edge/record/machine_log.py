"""Every hold and fault, raised and cleared (and by whom): a table beside the events.

Rare writes, so a connection of its own to the same WAL database; a failure to write is
logged and never stops the machine.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

from ecosorter.edge.record.events import connect

log = logging.getLogger("ecosorter.events")

SCHEMA = """
CREATE TABLE IF NOT EXISTS machine_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    compartment INTEGER,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    who TEXT NOT NULL DEFAULT ''
);
"""


class MachineLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._ino = -1

    def record(self, entry: dict, state: str, who: str, t: float) -> None:
        with self._lock:
            for attempt in range(2):
                try:
                    self._insert(entry, state, who, t)
                    return
                except (sqlite3.Error, OSError) as e:
                    # a connection that failed once (its WAL removed under it: "disk I/O error" at every
                    # later write) is not kept: the second try opens afresh, as the event log does
                    if self._db is not None:
                        self._db.close()
                        self._db = None
                    if attempt:
                        log.error("machine log %s: %s (the hold/fault is still shown and acted on)", self.path, e)

    def _insert(self, entry: dict, state: str, who: str, t: float) -> None:
        ino = os.stat(self.path).st_ino if self.path.exists() else -1
        if self._db is not None and ino != self._ino:  # the event log was set aside or recreated
            self._db.close()
            self._db = None
        if self._db is None:
            self._db = connect(self.path)
            self._db.executescript(SCHEMA)
            self._ino = os.stat(self.path).st_ino
        self._db.execute("INSERT INTO machine_log (time, kind, name, compartment, state, detail, who) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (t, entry["kind"], entry["name"],
                                                          entry["compartment"], state, entry["detail"], who))

    def rows(self) -> list[dict]:
        with self._lock:
            if self._db is None:
                return []
            cur = self._db.execute("SELECT time, kind, name, compartment, state, detail, who FROM machine_log ORDER BY seq")
            names = [c[0] for c in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
