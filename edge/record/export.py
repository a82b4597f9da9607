"""`ecosorter export OUT/ [--since 7d] [--labeled-only]`: captured photos as class folders + labels.csv,
ready for `ecosorter-train` (and for calibrating the next int8 model).

The folder is what the item really was where a person said so (true label); otherwise the
model's answer, except for flagged items (a person said "wrong") without a true label: those go
to `_unlabeled/`, which training ignores, so a retrained model never learns its own mistakes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ecosorter.edge.errors import EcoSorterError
from ecosorter.edge.record.events import DAMAGED_HINT, EventLog, LogDamaged

UNLABELED = "_unlabeled"
CSV_COLUMNS = ("photo", "id", "time", "bin_id", "model_sha256", "predicted", "confidence", "probabilities",
               "true_label", "labeled_by", "labeled_at", "flagged", "uncertain", "compartment", "routed_to")
_DURATION = re.compile(r"(\d+)\s*(s|m|h|d|w)")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# The export's own record of what it wrote (path -> sha256): --replace removes these and nothing else.
RECORD = ".ecosorter-export.json"
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)  # no bin recorded anything before: a typo
# A cell a spreadsheet would run as a formula (CSV injection): written with a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportError(EcoSorterError):
    pass


@dataclass(frozen=True)
class Exported:
    """What an export wrote, of the events it covered: photos + not_taken + removed == events."""

    photos: int
    events: int = 0  # in --since (and labelled, with --labeled-only)
    not_taken: int = 0  # no photo recorded: record.capture did not keep one
    removed: int = 0  # a photo was recorded, its file is gone (the capture quota evicts oldest first)

    def summary(self) -> str:
        """Why fewer photos than events, in the user's words ("" when every event has its photo)."""
        why = []
        if self.not_taken:
            why.append(f"{self.not_taken} never taken (record.capture decides which items are photographed: by "
                       "default the uncertain ones and a share of the confident ones; a label keeps its item's photo)")
        if self.removed:
            why.append(f"{self.removed} removed from the disk (record.capture_quota_mb: the oldest photos go first)")
        return f"{self.not_taken + self.removed} events have no photo: {'; '.join(why)}" if why else ""


def parse_since(text: str, now: datetime | None = None) -> str:
    """--since: a date (2026-11-01), an ISO timestamp (with or without zone; UTC if none), epoch
    seconds, or a duration back from now (7d, 12h, 30m, 2w, 1d12h). Returns the UTC ISO string the
    event log compares with; anything else is refused, never read as "export nothing"."""
    text = (text or "").strip()
    if not text:
        return ""
    now = now or datetime.now(timezone.utc)
    if _DURATION.fullmatch(text) or re.fullmatch(r"(\d+\s*[smhdw]\s*)+", text):
        try:
            delta = timedelta()
            for n, unit in _DURATION.findall(text):
                delta += timedelta(**{_UNITS[unit]: int(n)})
            return _iso(_plausible(text, now - delta, now))
        except (OverflowError, ValueError):  # timedelta beyond 999,999,999 days, or before year 1
            raise ExportError(f"--since {text[:40]!r} reaches back before {EARLIEST.year}; "
                              "no bin recorded anything then") from None
    if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return _iso(_plausible(text, datetime.fromtimestamp(float(text), timezone.utc), now))
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"--since {text!r}: expected a date (2026-11-01), a timestamp "
                          "(2026-11-01T08:00:00+07:00, or epoch seconds) or a duration (7d, 12h, 30m)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return _iso(_plausible(text, t, now))


def _plausible(text: str, t: datetime, now: datetime) -> datetime:
    """A date in the future or before 2000 would silently export nothing (or everything): refused."""
    if t > now:
        raise ExportError(f"--since {text[:40]!r} is in the future ({_iso(t)}; now {_iso(now)})")
    if t < EARLIEST:
        raise ExportError(f"--since {text[:40]!r} is {t.year}, before {EARLIEST.year}; no bin recorded anything then")
    return t


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _read_record(out: Path) -> dict[str, str]:
    path = out / RECORD
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise ExportError(f"export --replace: {path} is not a regular file; not touching {out}")
        d = json.loads(path.read_text())
        files = d["files"]
        if not (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
            raise TypeError("files must map paths to sha256")
        return files
    except FileNotFoundError:
        raise ExportError(f"export --replace: {out} has no {RECORD} (the record an export keeps of what it "
                          "wrote), so nothing in it is known to be an export; nothing removed. Use an empty "
                          "folder, or empty this one yourself") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"export --replace: {path} is unreadable ({e}); nothing removed from {out}") from None


def _clear_export(out: Path) -> None:
    """Remove exactly what the earlier export's record lists, unchanged; first check that nothing
    else is there (a person's own file or folder, a changed file, a symlink), and if anything is,
    remove nothing and name it. Symlinks are never followed and never removed."""
    written = _read_record(out)
    foreign: list[str] = []
    ours_files: list[Path] = []
    ours_dirs: list[Path] = []
    for top, dirs, files in os.walk(out, followlinks=False):
        here = Path(top)
        for name in sorted(dirs):
            p = here / name
            rel = p.relative_to(out).as_posix()
            if p.is_symlink():
                foreign.append(f"{rel} (a symbolic link)")
            elif not any(f.startswith(rel + "/") for f in written):
                foreign.append(f"{rel}/ (a folder the export did not write)")
            else:
                ours_dirs.append(p)
        for name in sorted(files):
            p = here / name
            rel = p.relative_to(out).as_posix()
            if rel == RECORD:
                continue
            mode = os.lstat(p).st_mode
            if not stat.S_ISREG(mode):
                foreign.append(f"{rel} ({'a symbolic link' if stat.S_ISLNK(mode) else 'not a regular file'})")
            elif rel not in written:
                foreign.append(f"{rel} (not written by the export)")
            elif _sha256(p) != written[rel]:
                foreign.append(f"{rel} (changed since the export)")
            else:
                ours_files.append(p)
    if foreign:
        more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        raise ExportError(f"export --replace: {out} holds what the earlier export did not write: "
                          f"{'; '.join(foreign[:10])}{more}. Nothing removed; move them away first")
    for p in ours_files:
        p.unlink()
    for p in sorted(ours_dirs, key=lambda d: len(d.parts), reverse=True):
        p.rmdir()
    (out / RECORD).unlink()


def _class_folder(out: Path, folder: str) -> Path:
    """out/<folder>, made if missing; one that is a symlink or a file is an error, never written through."""
    d = out / folder
    try:
        os.mkdir(d, 0o755)
    except FileExistsError:
        mode = os.lstat(d).st_mode
        if not stat.S_ISDIR(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
            raise ExportError(f"export: {d} is {what}; an export writes only into folders it makes") from None
    return d


def _copy_new(src: Path, dst: Path) -> str:
    """Copy into a new file (never an existing one, never through a symlink); returns its sha256."""
    h = hashlib.sha256()
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise ExportError(f"export: {dst} already exists; not overwriting it") from None
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                h.update(block)
                out.write(block)
    except BaseException:  # a full disk: no truncated photo left for training to read
        dst.unlink(missing_ok=True)
        raise
    return h.hexdigest()


def _cell(v: object) -> object:
    """CSV injection: text a spreadsheet would evaluate (=, +, -, @, tab, CR first) gets a leading '."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


def folder_for(predicted: str, true_label: str, flagged: bool) -> str:
    if true_label:
        return true_label
    return UNLABELED if flagged else predicted


def export(state_dir: Path, out: Path, since: str = "", labeled_only: bool = False, replace: bool = False,
           warn=lambda msg: None) -> Exported:
    since_iso = parse_since(since)
    if out.exists() and not out.is_dir():
        raise ExportError(f"export: {out} is not a folder")
    if out.exists() and any(out.iterdir()):
        if not replace:
            raise ExportError(f"export: {out} is not empty; an old export there would leave photos in the "
                                 "wrong class folders. Use an empty folder, or --replace to clear it first")
        _clear_export(out)
    try:
        events = EventLog(state_dir / "events.db", repair=False)
    except LogDamaged as e:
        raise ExportError(f"export: {e}; nothing exported. {DAMAGED_HINT}") from None
    captures = state_dir / "captures"
    flagged_files = set((captures / "flagged.txt").read_text().split()) if (captures / "flagged.txt").exists() else set()
    try:
        rows = events.query("SELECT * FROM events WHERE image != '' AND time >= ? ORDER BY seq", (since_iso,))
        lost = events.query("SELECT id FROM events WHERE image = '' AND true_label != '' AND time >= ?", (since_iso,))
        which = "time >= ?" + (" AND true_label != ''" if labeled_only else "")
        total, not_taken = events.query(f"SELECT COUNT(*), COALESCE(SUM(image = ''), 0) FROM events WHERE {which}",
                                        (since_iso,))[0]
        # a Pi has no RTC: items sorted before NTP set the clock carry 1970 (or a stale time), which
        # no --since window can place; said, not silently left out
        unplaced = events.query("SELECT COUNT(*) AS n FROM events WHERE image != '' AND time < ?",
                                (_iso(EARLIEST),))[0]["n"] if since_iso else 0
    finally:
        events.close()
    if unplaced:
        warn(f"{unplaced} photographed items carry a time before {EARLIEST.year} (recorded before the bin's "
             "clock was set: no RTC, no NTP yet) and are not in this --since export; export without --since "
             "to include them")
    if lost:
        warn(f"{len(lost)} labelled items have no photo (labelled after their photo was gone) and are not "
             f"exported: {', '.join(r['id'] for r in lost[:5])}{' ...' if len(lost) > 5 else ''}")
    made_out = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"export: cannot make {out}: {e.strerror or e}") from None
    written: dict[str, str] = {}
    n = removed = 0
    at = out / "labels.csv"  # what is being written, for the error
    try:
        fd = os.open(out / "labels.csv", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise ExportError(f"export: {out / 'labels.csv'} already exists; not overwriting it") from None
    except OSError as e:
        raise ExportError(f"export: cannot write {out / 'labels.csv'}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", newline="") as f:
            written["labels.csv"] = ""
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in rows:
                if labeled_only and not r["true_label"]:
                    continue
                src = captures / r["image"]
                if not src.exists():
                    removed += 1  # evicted by the quota
                    continue
                flagged = bool(r["flagged"]) or r["image"] in flagged_files
                folder = folder_for(r["label"], r["true_label"], flagged)
                at = out / folder / src.name
                written[f"{folder}/{src.name}"] = _copy_new(src, _class_folder(out, folder) / src.name)
                at = out / "labels.csv"
                w.writerow([_cell(v) for v in (
                    f"{folder}/{src.name}", r["id"], r["time"], r["bin_id"], r["model_sha256"], r["label"],
                    f"{r['confidence']:.4f}", r["probabilities"], r["true_label"], r["labeled_by"],
                    r["labeled_at"], int(flagged), int(r["uncertain"]), r["compartment"], r["routed_to"])])
                n += 1
        written["labels.csv"] = _sha256(out / "labels.csv")
        _write_record(out, written)
    except BaseException as e:
        # all or nothing: a half export (a full disk, a folder in the way, Ctrl-C) is removed, so no
        # truncated photo or half labels.csv is ever trained on and the folder can simply be retried
        _remove_written(out, written, made_out)
        if isinstance(e, OSError):
            raise ExportError(f"export: writing {e.filename or at} failed ({e.strerror or e}); nothing "
                              f"exported, what it had written into {out} was removed") from None
        raise
    return Exported(n, total, not_taken, removed)


def _remove_written(out: Path, written: dict[str, str], made_out: bool) -> None:
    """Best effort: the files this export wrote, then its folders if empty, then `out` if it made it."""
    for rel in [*written, RECORD, f"{RECORD}.tmp"]:
        try:
            (out / rel).unlink(missing_ok=True)
        except OSError:
            pass
    try:  # `out` was empty when the export began: an empty class folder in it is one the export made
        folders = [d for d in out.iterdir() if d.is_dir() and not d.is_symlink()]
    except OSError:
        folders = []
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            pass
    if made_out:
        try:
            out.rmdir()
        except OSError:
            pass


def _write_record(out: Path, written: dict[str, str]) -> None:
    tmp = out / f"{RECORD}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.write_text(json.dumps({"format": 1, "files": written}, indent=0, sort_keys=True))
    os.replace(tmp, out / RECORD)
