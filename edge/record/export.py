"""`ecosorter export OUT/ [--since 7d] [--labeled-only]`: captured photos as class folders + labels.csv,
ready for `ecosorter-train` (and for calibrating the next int8 model).

The folder is what the item really was where a person said so (true label); otherwise the
model's answer, except for flagged items (a person said "wrong") without a true label: those go
to `_unlabeled/`, which training ignores, so a retrained model never learns its own mistakes.
"""

from __future__ import annotations

import csv
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ecosorter.edge.errors import EcoSorterError
from ecosorter.edge.record.events import EventLog

UNLABELED = "_unlabeled"
CSV_COLUMNS = ("photo", "id", "time", "bin_id", "model_sha256", "predicted", "confidence", "probabilities",
               "true_label", "labeled_by", "labeled_at", "flagged", "uncertain", "compartment", "routed_to")
_DURATION = re.compile(r"(\d+)\s*(s|m|h|d|w)")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class ExportError(EcoSorterError):
    pass


def parse_since(text: str, now: datetime | None = None) -> str:
    """--since: a date (2026-11-01), an ISO timestamp (with or without zone; UTC if none), epoch
    seconds, or a duration back from now (7d, 12h, 30m, 2w, 1d12h). Returns the UTC ISO string the
    event log compares with; anything else is refused, never read as "export nothing"."""
    text = (text or "").strip()
    if not text:
        return ""
    now = now or datetime.now(timezone.utc)
    if _DURATION.fullmatch(text) or re.fullmatch(r"(\d+\s*[smhdw]\s*)+", text):
        delta = timedelta()
        for n, unit in _DURATION.findall(text):
            delta += timedelta(**{_UNITS[unit]: int(n)})
        return _iso(now - delta)
    if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return _iso(datetime.fromtimestamp(float(text), timezone.utc))
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"--since {text!r}: expected a date (2026-11-01), a timestamp "
                          "(2026-11-01T08:00:00+07:00, or epoch seconds) or a duration (7d, 12h, 30m)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    if t > now:
        raise ExportError(f"--since {text!r} is in the future (now {_iso(now)})")
    return _iso(t)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _clear_export(out: Path) -> None:
    """Only what an export writes: class folders of photos and labels.csv. Anything else stops it."""
    for child in out.iterdir():
        if child.name == "labels.csv":
            child.unlink()
        elif child.is_dir() and all(f.suffix == ".jpg" for f in child.iterdir()):
            shutil.rmtree(child)
        else:
            raise EcoSorterError(f"export --replace: {child} is not part of an export; not touching {out}")


def folder_for(predicted: str, true_label: str, flagged: bool) -> str:
    if true_label:
        return true_label
    return UNLABELED if flagged else predicted


def export(state_dir: Path, out: Path, since: str = "", labeled_only: bool = False, replace: bool = False,
           warn=lambda msg: None) -> int:
    since_iso = parse_since(since)
    if out.exists() and any(out.iterdir()):
        if not replace:
            raise EcoSorterError(f"export: {out} is not empty; an old export there would leave photos in the "
                                 "wrong class folders. Use an empty folder, or --replace to clear it first")
        _clear_export(out)
    events = EventLog(state_dir / "events.db")
    captures = state_dir / "captures"
    flagged_files = set((captures / "flagged.txt").read_text().split()) if (captures / "flagged.txt").exists() else set()
    try:
        rows = events.query("SELECT * FROM events WHERE image != '' AND time >= ? ORDER BY seq", (since_iso,))
        lost = events.query("SELECT id FROM events WHERE image = '' AND true_label != '' AND time >= ?", (since_iso,))
    finally:
        events.close()
    if lost:
        warn(f"{len(lost)} labelled items have no photo (labelled after their photo was gone) and are not "
             f"exported: {', '.join(r['id'] for r in lost[:5])}{' ...' if len(lost) > 5 else ''}")
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            if labeled_only and not r["true_label"]:
                continue
            src = captures / r["image"]
            if not src.exists():
                continue  # evicted by the quota
            flagged = bool(r["flagged"]) or r["image"] in flagged_files
            folder = folder_for(r["label"], r["true_label"], flagged)
            dst = out / folder / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            w.writerow([f"{folder}/{src.name}", r["id"], r["time"], r["bin_id"], r["model_sha256"], r["label"],
                        f"{r['confidence']:.4f}", r["probabilities"], r["true_label"], r["labeled_by"],
                        r["labeled_at"], int(flagged), int(r["uncertain"]), r["compartment"], r["routed_to"]])
            n += 1
    return n
