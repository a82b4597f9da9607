"""The event log: SQLite in WAL mode with synchronous=FULL.

A committed event survives kill -9 and power cuts (WAL + FULL fsyncs the log on commit); the
file is never left corrupt. If the disk is full or the folder read-only, events wait in memory
(bounded) and are written when the disk allows; if the database file is deleted underneath the
running sorter, a new one is started at once rather than writing into the unlinked inode.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ecosorter.edge.record.event import Event

log = logging.getLogger("ecosorter.events")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    probabilities TEXT NOT NULL,
    uncertain INTEGER NOT NULL,
    compartment INTEGER NOT NULL,
    routed_to INTEGER NOT NULL,
    routed_ok INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    model_sha256 TEXT NOT NULL,
    latency_ms TEXT NOT NULL,
    image TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    flagged INTEGER NOT NULL DEFAULT 0,
    bin_id TEXT NOT NULL DEFAULT '',
    source_name TEXT NOT NULL DEFAULT '',
    true_label TEXT NOT NULL DEFAULT '',
    labeled_by TEXT NOT NULL DEFAULT '',
    labeled_at TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY REFERENCES events(seq),
    attempts INTEGER NOT NULL DEFAULT 0
);
"""
COLUMNS = ("id", "time", "label", "confidence", "probabilities", "uncertain", "compartment", "routed_to",
           "routed_ok", "frames", "model_sha256", "latency_ms", "image", "note", "bin_id", "source_name")
MAX_PENDING = 10_000
# Columns added after the first release: older event logs get them on open (ALTER TABLE).
MIGRATIONS = {"true_label": "TEXT NOT NULL DEFAULT ''", "labeled_by": "TEXT NOT NULL DEFAULT ''",
              "labeled_at": "TEXT NOT NULL DEFAULT ''"}
LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def check_label(label: str, by: str) -> None:
    """A true label is a label id (lower-case, digits, _ and -); who gave it is short plain text."""
    if not (isinstance(label, str) and 0 < len(label) <= 64 and set(label) <= LABEL_CHARS):
        raise ValueError(f"label {label!r}: expected a label id such as 'kaca' (a-z, 0-9, _ and -)")
    if not (isinstance(by, str) and len(by) <= 64 and by.isprintable()):
        raise ValueError(f"labeled_by {by!r}: expected up to 64 printable characters")


def explain(folder: Path, e: Exception) -> str:
    """SQLite says "unable to open database file"; say why, in the operator's terms."""
    try:
        st = os.statvfs(folder)
        if st.f_flag & os.ST_RDONLY:
            return f"the state folder {folder} is on a read-only filesystem ({e})"
        if st.f_bavail == 0:
            return f"the disk holding {folder} is full ({e})"
    except OSError:
        pass
    return str(e)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("PRAGMA cache_size=-1024")  # 1 MB page cache: the Pi has better uses for RAM
    return db


class EventLog:
    def __init__(self, path: str | Path, outbox: bool = False):
        self.path = Path(path)
        self.outbox = outbox  # queue every event for MQTT
        self.error = ""
        self.pending: list[Event] = []
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._inode = -1
        try:
            self._open()
        except (sqlite3.Error, OSError) as e:  # read-only or full disk at start: sort anyway
            self.error = f"event log {self.path}: {explain(self.path.parent, e)}"
            log.error("%s; events will wait in memory until it can be written", self.error)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect(self.path)
        ok = db.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":  # never write into a damaged file: keep it for forensics, start afresh
            db.close()
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("event log %s failed its integrity check (%s); moved to %s", self.path, ok, aside)
            db = connect(self.path)
        db.executescript(SCHEMA)
        have = {r[1] for r in db.execute("PRAGMA table_info(events)")}
        for column, decl in MIGRATIONS.items():
            if column not in have:
                db.execute(f"ALTER TABLE events ADD COLUMN {column} {decl}")
        self._db = db
        self._inode = os.stat(self.path).st_ino

    def _ensure_open(self) -> None:
        if self._db is None:
            self._open()
            return
        try:
            same = os.stat(self.path).st_ino == self._inode
        except FileNotFoundError:
            same = False
        if not same:
            log.error("event log %s was deleted or replaced; starting a new one", self.path)
            if self._db is not None:
                self._db.close()
            self._open()

    def append(self, event: Event) -> bool:
        """Write the event (and any that waited); False if it had to wait in memory."""
        with self._lock:
            self.pending.append(event)
            try:
                self._ensure_open()
                self._flush()
                self.error = ""
                return True
            except (sqlite3.Error, OSError) as e:
                self.error = f"event log {self.path}: {explain(self.path.parent, e)}"
                log.error("%s; %d events waiting in memory", self.error, len(self.pending))
                del self.pending[:-MAX_PENDING]
                return False

    def _flush(self) -> None:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for ev in self.pending:
                d = ev.to_dict()
                d["probabilities"] = json.dumps(d["probabilities"])
                d["latency_ms"] = json.dumps(d["latency_ms"])
                cur = db.execute(f"INSERT OR IGNORE INTO events ({','.join(COLUMNS)}) VALUES "
                                 f"({','.join('?' * len(COLUMNS))})", [d[c] for c in COLUMNS])
                if self.outbox and cur.rowcount:
                    db.execute("INSERT INTO outbox (seq) VALUES (?)", (cur.lastrowid,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.pending.clear()

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._db is None:
                self._ensure_open()
            assert self._db is not None
            self._db.row_factory = sqlite3.Row
            try:
                return self._db.execute(sql, args).fetchall()
            finally:
                self._db.row_factory = None

    def count(self) -> int:
        return self.query("SELECT COUNT(*) AS n FROM events")[0]["n"]

    def counts_since(self, iso_time: str) -> dict[str, int]:
        rows = self.query("SELECT label, COUNT(*) AS n FROM events WHERE time >= ? GROUP BY label", (iso_time,))
        return {r["label"]: r["n"] for r in rows}

    def flag(self, event_id: str) -> bool:
        with self._lock:
            if self._db is None:
                return False
            return self._db.execute("UPDATE events SET flagged = 1 WHERE id = ?", (event_id,)).rowcount > 0

    def set_label(self, event_id: str, label: str, by: str) -> bool:
        """What the item really was, who said so and when; False for an unknown id."""
        return not self.set_labels([(event_id, label, by)])

    def set_labels(self, items: list[tuple[str, str, str]]) -> list[str]:
        """(id, label, by) in one transaction; returns the unknown ids, and then applies none."""
        for _, label, by in items:
            check_label(label, by)
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self._lock:
            self._ensure_open()
            assert self._db is not None
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                unknown = [i for i, _, _ in items
                           if db.execute("SELECT 1 FROM events WHERE id = ?", (i,)).fetchone() is None]
                if not unknown:
                    db.executemany("UPDATE events SET true_label = ?, labeled_by = ?, labeled_at = ? WHERE id = ?",
                                   [(label, by, now, i) for i, label, by in items])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return unknown

    def needs_label(self, limit: int = 100) -> list[str]:
        """Flagged items nobody has labelled yet, newest first."""
        rows = self.query("SELECT id FROM events WHERE flagged = 1 AND true_label = '' ORDER BY seq DESC LIMIT ?",
                          (limit,))
        return [r["id"] for r in rows]

    def set_image(self, event_id: str, image: str) -> None:
        with self._lock:
            if self._db is None:
                return
            self._db.execute("UPDATE events SET image = ? WHERE id = ?", (image, event_id))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    if self.pending:
                        self._flush()
                except (sqlite3.Error, OSError) as e:
                    log.error("closing with %d events unwritten: %s", len(self.pending), e)
                self._db.close()
                self._db = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
