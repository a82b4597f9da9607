"""The event log: SQLite in WAL mode with synchronous=FULL.

A committed event survives kill -9 and power cuts (WAL + FULL fsyncs the log on commit); the
file is never left corrupt. When the disk fills, room is made before anything waits: first
photos are evicted (`on_disk_full`, the capture store's oldest unflagged first), then a small
pre-allocated reserve file is released, so the event is committed, not held in memory. Only if
that is not enough (or the folder is read-only) do events wait in memory (bounded) until the
disk allows; whatever is still unwritten at close() is counted in `unsaved` and logged, and the
CLI exits non-zero naming the cause. If the database file is deleted underneath the running
sorter, a new one is started at once rather than writing into the unlinked inode.

Before an item moves, its event is written into the `routing` table as it must stand if the bin
dies mid-route (`intend`); the event's own commit deletes that row in the same transaction, and the
next start records whatever is left there (`recover_routing`): a power cut between the drop and the
record loses no sorted item, and none is recorded twice (same id).

Every committed event is also kept in a bounded in-memory journal (the last JOURNAL_MAX) until an
integrity check has seen it in the file (edge/record/integrity.py trims it). Whenever a new log has
to be started under the running bin (damaged, deleted, replaced), the journal is written into it
first, so the events recorded since the last good check are not lost with the old file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
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
CREATE TABLE IF NOT EXISTS routing (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL
);
"""
COLUMNS = ("id", "time", "label", "confidence", "probabilities", "uncertain", "compartment", "routed_to",
           "routed_ok", "frames", "model_sha256", "latency_ms", "image", "note", "bin_id", "source_name")
MAX_PENDING = 10_000
# Events committed since the last good integrity check: 2,000 events as the bin makes them take 2.2 MB
# (benchmarks/log_check.py). A bin sorts a few hundred a day; the check runs early at 3/4 full.
JOURNAL_MAX = 2_000
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
    # a short WAL: it is written in whole pages per commit and would otherwise grow to 4 MB before
    # a checkpoint, which on a full disk cannot then run (it needs room in the database file)
    db.execute("PRAGMA wal_autocheckpoint=64")
    db.execute("PRAGMA journal_size_limit=262144")
    return db


def disk_full(folder: Path, e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "full" in str(e).lower():  # SQLITE_FULL: "database or disk is full"
        return True
    try:
        st = os.statvfs(folder)
        return not st.f_flag & os.ST_RDONLY and st.f_bavail * st.f_frsize < 64 * 1024
    except OSError:
        return False


class _Damaged(Exception):
    """The database file is not a sound SQLite database (corrupt, or not a database at all)."""


DAMAGED_HINT = ("The bin sets a damaged log aside as events.db.damaged-<UTC time> (kept for inspection) and "
                "starts a new one, with the `log` fault on its page: at its next start, or by its periodic "
                "check while it runs")
LogDamaged = _Damaged  # what a reader (EventLog(..., repair=False): `label`, `export`) gets


def damaged(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return any(w in str(e) for w in ("malformed", "not a database"))


ROOM_BYTES = 64 * 1024  # free space kept for the next record (one event, a few WAL pages, with margin)


class EventLog:
    def __init__(self, path: str | Path, outbox: bool = False, reserve_bytes: int = 0,
                 on_disk_full: Callable[[int], int] | None = None, repair: bool = True):
        self.path = Path(path)
        # False for the CLI's readers: a damaged log raises LogDamaged and stays where it is. Only the
        # bin sets it aside, so its `log` fault (page, MQTT, machine log) is raised, never skipped
        # because `export` had quietly swapped in an empty log first.
        self.repair = repair
        self.outbox = outbox  # queue every event for MQTT
        self.error = ""
        self.pending: list[Event] = []
        self.unsaved = 0  # events that could not be written by close(): the CLI exits non-zero
        self.damaged = ""  # set when a damaged log was moved aside (edge/record/guard.py raises the fault)
        self.on_damaged: Callable[[str], None] | None = None
        # (bytes wanted) -> bytes freed; the capture store evicts photos (set by build_sorter)
        self.on_disk_full = on_disk_full
        self.reserve = self.path.parent / ".disk-reserve"
        self.reserve_bytes = int(reserve_bytes)
        self._reserve_t = -1e9
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._inode = -1
        self._wal_inode = -1  # the write-ahead log our connection writes into
        # (number, event) committed and not yet seen by a good integrity check; numbers only grow
        self.journal: deque[tuple[int, Event]] = deque(maxlen=JOURNAL_MAX)
        self._journaled = 0
        self.journal_dropped = 0  # events that left the journal unchecked (it was full)
        self._routing: set[str] = set()  # ids with a row in `routing`, deleted with their event's commit
        self._folder_lock: int | None = None  # the bin's lock on the state folder (recover_routing)
        try:
            self._open()
        except (sqlite3.Error, OSError) as e:  # read-only or full disk at start: sort anyway
            self.error = f"event log {self.path}: {explain(self.path.parent, e)}"
            log.error("%s; events will wait in memory until it can be written", self.error)
        else:
            self._keep_reserve()

    def _keep_reserve(self) -> None:
        """(Re)create the reserve file when there is room again; at most once a minute."""
        if not self.reserve_bytes or time.monotonic() - self._reserve_t < 60.0:
            return
        self._reserve_t = time.monotonic()
        try:
            if self.reserve.exists() and self.reserve.stat().st_size >= self.reserve_bytes:
                return
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < 4 * self.reserve_bytes:
                return  # not while space is short: that would only fill the disk sooner
            with open(self.reserve, "wb") as f:
                for start in range(0, self.reserve_bytes, 1 << 16):  # real blocks, not a sparse file
                    f.write(b"\0" * min(1 << 16, self.reserve_bytes - start))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self.reserve.unlink(missing_ok=True)
            log.warning("disk reserve %s not created: %s", self.reserve, e.strerror or e)

    def _make_room(self, e: BaseException) -> bool:
        """Disk full: evict photos, then release the reserve. True if anything was freed."""
        if not disk_full(self.path.parent, e):
            return False
        freed = 0
        if self.on_disk_full is not None:
            try:
                freed = self.on_disk_full(1 << 20)
            except Exception:
                log.exception("making room for events failed")
        if freed:
            log.warning("disk full: evicted %d kB of photos to record events", freed // 1024)
            return True
        if self._db is not None and self._wal_bytes() > 0:
            try:  # fold the write-ahead log into the database and truncate it: it may hold megabytes
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                if self._wal_bytes() == 0:
                    return True
            except sqlite3.Error:
                pass
        if self.reserve.exists():
            self.reserve.unlink(missing_ok=True)
            self._reserve_t = time.monotonic()
            log.error("disk full and no photos left to evict: released the %d kB reserve %s so events are "
                      "still recorded; free space on the disk", self.reserve_bytes // 1024, self.reserve)
            return True
        return False

    def room(self) -> bool:
        """Is there room for the next record, made if need be by evicting photos? False on a
        read-only disk, or a full one that no photo of ours can free: the bin must not sort an item
        it could not record (edge/record/guard.py holds). The reserve file is not spent here: it
        stays for the item already moving when the room ran out (append releases it)."""
        for _ in range(4):
            try:
                st = os.statvfs(self.path.parent)
            except OSError:
                return False
            if st.f_flag & os.ST_RDONLY:
                return False
            if st.f_bavail * st.f_frsize >= ROOM_BYTES:
                return True
            try:
                freed = self.on_disk_full(2 * ROOM_BYTES) if self.on_disk_full is not None else 0
            except Exception:
                log.exception("making room for events failed")
                freed = 0
            if not freed:
                return False
            log.warning("disk full: evicted %d kB of photos to record events", freed // 1024)
        return False

    def retry(self) -> bool:
        """Write what waits in memory; True when nothing waits any more."""
        with self._lock:
            if not self.pending:
                return True
            try:
                self._write_pending()
            except (sqlite3.Error, OSError) as e:
                self.error = f"event log {self.path}: {explain(self.path.parent, e)}"
                return False
            self.error = ""
            log.warning("event log %s writable again: waiting events written", self.path)
            return True

    def _short_wal(self) -> None:
        """Space is short (the reserve is gone): fold the WAL into the database after each commit, so
        what is left grows by the size of the events, not by whole WAL pages per commit."""
        try:
            assert self._db is not None
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass

    def _wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _write_pending(self) -> None:
        """Open if needed and commit everything pending, making room on a full disk; raises if it cannot."""
        for _attempt in range(4):  # as is, after evicting photos, a WAL checkpoint, releasing the reserve
            try:
                self._ensure_open()
                self._flush()
                return
            except _Damaged as e:  # found damaged on a (re)open: _open set it aside; try the new one
                log.error("event log: %s", e)
            except (sqlite3.Error, OSError) as e:
                if isinstance(e, sqlite3.Error) and damaged(e) and self._db is not None:
                    self._db.close()  # damaged under the running bin: set aside, a new log next try
                    self._db = None
                    self._set_aside(str(e))
                    continue
                if not self._make_room(e):
                    raise
        self._ensure_open()
        self._flush()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect_checked()
        except _Damaged as e:  # never write into a damaged file: keep it for inspection, start afresh
            if not self.repair:
                raise _Damaged(f"{self.path} is damaged ({e})") from None
            self._set_aside(str(e))
            db = self._connect_checked()
        self._db = db
        self._inode = os.stat(self.path).st_ino
        self._wal_inode = self._wal_ino()
        if self.journal:  # a new log under the running bin: first what the old file held unchecked
            log.warning("event log %s: writing the %d events recorded since the last good check into it%s",
                        self.path, len(self.journal),
                        f" ({self.journal_dropped} older unchecked ones left the full journal: they are only in "
                        "the file set aside)" if self.journal_dropped else "")
            self.journal_dropped = 0
            self.pending[:0] = [ev for _, ev in self.journal]
            self.journal.clear()

    def _connect_checked(self) -> sqlite3.Connection:
        """Open, check and migrate; _Damaged if the file is not a sound SQLite database."""
        db = None
        try:
            db = connect(self.path)
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise _Damaged(f"failed its integrity check: {ok[:200]}")
            db.executescript(SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(events)")}
            for column, decl in MIGRATIONS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE events ADD COLUMN {column} {decl}")
            return db
        except (sqlite3.Error, _Damaged) as e:
            if db is not None:
                db.close()
            if isinstance(e, sqlite3.Error) and damaged(e):
                raise _Damaged(str(e)) from None
            raise

    def _set_aside(self, reason: str) -> None:
        """Move the damaged file (and its WAL and shared memory) to events.db.damaged-<UTC time>,
        kept for inspection; tell the machine (a fault the page and MQTT show)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{aside}{suffix}")
        self.damaged = f"{self.path.name} was damaged ({reason}); kept as {aside.name}, a new log started"
        log.error("event log %s", self.damaged)
        if self.on_damaged is not None:
            try:
                self.on_damaged(self.damaged)
            except Exception:
                log.exception("reporting the damaged event log failed")

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
                self._keep_unlinked()
                self._db.close()
            self._open()
        elif self._wal_ino() != self._wal_inode:
            # Someone removed (or replaced) events.db-wal: our connection would go on committing into
            # the unlinked file, lost at the next power cut, and every other connection (MQTT, the
            # check, `ecosorter label`) fails with "disk I/O error". Fold what it holds into the
            # database through our open handle, then start afresh (the journal is written again).
            log.error("event log %s: its write-ahead log %s-wal was deleted or replaced under the running "
                      "bin; folding it into the database and starting a new one", self.path, self.path)
            try:  # (busy, wal frames, frames folded): busy while another connection reads a snapshot
                busy, frames, folded = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as e:
                busy, frames, folded = 1, 0, 0
                log.error("event log %s: the removed write-ahead log could not be folded in (%s)", self.path, e)
            if busy or folded < frames:
                # what is not folded in dies with our handle: copy everything it sees out first
                self._keep_unlinked("wal-removed")
            self._db.close()
            self._db = None
            self._open()

    def _keep_unlinked(self, what: str = "") -> None:
        """events.db deleted (or replaced) under the bin: our open handle is the last way to what the
        old file held, every event since the first, not only the journal's since the last good check.
        Copied out (SQLite's backup, WAL included) as events.db.deleted-<UTC time>, kept for a person."""
        assert self._db is not None
        what = what or ("replaced" if self.path.exists() else "deleted")  # also the copy's name: .<what>-<UTC>
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        keep, n = self.path.with_name(f"{self.path.name}.{what}-{stamp}"), 1
        while keep.exists():
            n += 1
            keep = self.path.with_name(f"{self.path.name}.{what}-{stamp}-{n}")
        try:
            dst = sqlite3.connect(keep)
            try:
                self._db.backup(dst)
                count = dst.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            finally:
                dst.close()
        except sqlite3.Error as e:  # a full disk, or the old file was damaged too: logged, the bin goes on
            keep.unlink(missing_ok=True)
            log.error("event log %s was %s: what it held could not be kept (%s)", self.path, what, e)
            return
        log.error("event log %s was %s under the running bin: what it held (%d events) is kept as %s",
                  self.path, what, count, keep.name)

    def _wal_ino(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_ino
        except OSError:
            return -1

    def watch_files(self) -> bool:
        """Between items (RecordGuard.tick): a log or WAL deleted or replaced under the bin is
        started afresh now, not at the next item, so what the old files held is not left in
        unlinked files until then. False when the journal could not be written into the new log."""
        with self._lock:
            if self._db is None or self.pending:
                return True
            try:
                self._ensure_open()  # a new log takes the journal into pending
                if self.pending:
                    self._write_pending()
            except (sqlite3.Error, OSError, _Damaged) as e:
                self._waiting(e)
                return False
            return True

    def _waiting(self, e: BaseException) -> None:
        """A write failed: the cause is kept for the page and the CLI, the events wait in memory."""
        self.error = f"event log {self.path}: {explain(self.path.parent, e)}"
        log.error("%s; %d events waiting in memory", self.error, len(self.pending))

    def append(self, event: Event) -> bool:
        """Write the event (and any that waited); False if it had to wait in memory."""
        with self._lock:
            self.pending.append(event)
            try:
                self._write_pending()
                self.error = ""
                self._keep_reserve()
                if self.reserve_bytes and not self.reserve.exists():
                    self._short_wal()
                return True
            except (sqlite3.Error, OSError) as e:
                self._waiting(e)
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
            done = [(ev.id,) for ev in self.pending if ev.id in self._routing]
            if done:  # the item's record replaces its "being routed" row, atomically
                db.executemany("DELETE FROM routing WHERE id = ?", done)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT on a full disk has already rolled back
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        for ev in self.pending:
            self._routing.discard(ev.id)
            if len(self.journal) == JOURNAL_MAX:
                self.journal_dropped += 1
            self._journaled += 1
            self.journal.append((self._journaled, ev))
        self.pending.clear()

    # ------------------------------------------------------------------ an item on its way
    def intend(self, event: Event) -> bool:
        """Before the item moves: commit `event` (as it must stand if the bin dies mid-route) into
        `routing`. Its own append deletes the row; False (logged) if it could not be written, and
        then the item is routed anyway: the disk hold (guard.py) decides what may move, not this."""
        with self._lock:
            try:
                self._ensure_open()
                assert self._db is not None
                self._db.execute("INSERT OR REPLACE INTO routing (id, event) VALUES (?, ?)", (event.id, event.to_json()))
            except (sqlite3.Error, OSError, _Damaged) as e:
                log.warning("item %s: its 'being routed' record not written (%s)", event.id, explain(self.path.parent, e))
                return False
            self._routing.add(event.id)
            return True

    def recover_routing(self) -> list[Event]:
        """At start: record the items the last run was routing when it died (power cut, kill -9),
        as their `routing` rows say; returns them. An unreadable row is logged and dropped. Only by
        the one bin on this folder (a lock it holds until close): a second `run` on the same folder
        must not take the first's item in motion for a dead one (its real record would be ignored)."""
        if not self._lock_folder():
            log.warning("event log %s: another bin runs on this state folder; items it is moving are its own "
                        "to record", self.path)
            return []
        with self._lock:
            if self._db is None:
                return []
            try:
                rows = self._db.execute("SELECT id, event FROM routing").fetchall()
            except sqlite3.Error as e:
                log.error("event log %s: items being routed at the last stop not read: %s", self.path, e)
                return []
            found: list[Event] = []
            for event_id, text in rows:
                try:
                    found.append(Event(**json.loads(text)))
                except (ValueError, TypeError) as e:
                    log.error("event log %s: item %s being routed at the last stop is unreadable (%s)",
                              self.path, event_id, e)
                    try:  # runs in build_sorter: a full disk or a locked file must not stop the start
                        self._db.execute("DELETE FROM routing WHERE id = ?", (event_id,))
                    except sqlite3.Error as e2:
                        log.error("event log %s: unreadable item %s left in routing (%s)", self.path, event_id, e2)
            if not found:
                return found
            self._routing.update(ev.id for ev in found)
            self.pending.extend(found)
            try:
                self._write_pending()
            except (sqlite3.Error, OSError, _Damaged) as e:  # they wait in memory, as any event on a full disk
                self._waiting(e)
        for ev in found:
            log.error("item %s (%s) was being routed when the bin last stopped (power cut or kill): recorded as "
                      "not known to be routed", ev.id, ev.label)
        return found

    def _lock_folder(self) -> bool:
        """flock on <state>/.events.lock, held until close (the kernel lets go when the process dies)."""
        if self._folder_lock is not None:
            return True
        try:
            fd = os.open(self.path.parent / ".events.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return True  # a read-only folder: nothing can be recovered into it anyway, the attempt says so
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False  # held: another bin runs here
            # NFS/FUSE without flock (ENOLCK, EOPNOTSUPP): no second bin known of; one bin per folder is the rule
            log.warning("event log %s: %s cannot be locked (%s); recovering its items in motion anyway",
                        self.path, self.path.parent / ".events.lock", e)
            return True
        self._folder_lock = fd
        return True

    # ------------------------------------------------------------------ for the integrity check
    def check_mark(self) -> tuple[int, int]:
        """(inode, journal number) as a check starts: every event numbered up to here is committed,
        so a check that reads this inode afterwards sees it."""
        with self._lock:
            return self._inode, self._journaled

    def journal_nearly_full(self) -> bool:
        return len(self.journal) >= JOURNAL_MAX * 3 // 4

    def may_check(self) -> bool:
        """Not while events wait or space is short: with the reserve gone every commit truncates the
        WAL, which waits for the check's reader to finish."""
        with self._lock:
            return (self._db is not None and not self.pending and not self.error
                    and not (self.reserve_bytes and not self.reserve.exists()))

    def checked(self, inode: int, mark: int) -> None:
        """A check of `inode` found it sound: the events numbered up to `mark` are safe in the file."""
        with self._lock:
            if inode != self._inode:
                return  # the log was started afresh meanwhile: what the journal holds is not checked
            while self.journal and self.journal[0][0] <= mark:
                self.journal.popleft()
            self.journal_dropped = 0  # the ones dropped were older than `mark`: in the sound file

    def damaged_in_place(self, inode: int, reason: str) -> bool:
        """A check found the open file damaged: set it aside, start a new log and write the journal
        into it. False when that could not be written (the events wait in memory, as on a full disk)."""
        with self._lock:
            try:
                there = os.stat(self.path).st_ino
            except OSError:
                there = -1
            if inode != self._inode or inode != there or self._db is None:
                return True  # replaced or deleted meanwhile: the next append starts afresh (_ensure_open)
            self._db.close()
            self._db = None
            self._set_aside(reason)
            try:
                self._write_pending()
            except (sqlite3.Error, OSError) as e:
                self._waiting(e)
                return False
            self.error = ""
            return True

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
            try:
                return self._db.execute("UPDATE events SET flagged = 1 WHERE id = ?", (event_id,)).rowcount > 0
            except sqlite3.Error as e:  # a full disk: the flag is lost, the sorter is not
                log.error("flag %s not saved: %s", event_id, explain(self.path.parent, e))
                return False

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
                    # unchanged labels keep who gave them and when (re-importing an export changes nothing)
                    db.executemany("UPDATE events SET true_label = ?, labeled_by = ?, labeled_at = ? "
                                   "WHERE id = ? AND true_label != ?", [(lb, by, now, i, lb) for i, lb, by in items])
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
            try:
                self._db.execute("UPDATE events SET image = ? WHERE id = ?", (image, event_id))
            except sqlite3.Error as e:
                log.error("image of %s not saved: %s", event_id, explain(self.path.parent, e))

    def close(self) -> None:
        """Write what waits (opening the database if it never opened); never drops events silently."""
        with self._lock:
            if self.pending:
                try:
                    self._write_pending()
                except (sqlite3.Error, OSError) as e:
                    self.unsaved = len(self.pending)
                    self.error = f"event log {self.path}: {explain(self.path.parent, e)}"
                    log.critical("closing with %d events unwritten: %s", self.unsaved, self.error)
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._folder_lock is not None:
                os.close(self._folder_lock)
                self._folder_lock = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
