"""`ecosorter label ID LABEL` and `ecosorter label --import CSV`: true labels into the event log.

Strict: a label must be one the bin's model knows, an id must be in the log, and an import with
any bad row (reported with its line number) changes nothing.
"""

from __future__ import annotations

import csv
import getpass
import io
import re
from pathlib import Path

from ecosorter.edge.errors import EcoSorterError
from ecosorter.edge.record.events import DAMAGED_HINT, EventLog, LogDamaged, check_label

MAX_REPORTED = 20
# An import is an edited export: a year of a busy bin is ~100k rows of ~400 bytes. Anything bigger
# (or /dev/zero, a log file given by mistake) is refused before it is read whole into memory.
MAX_IMPORT_BYTES = 64 * 1024 * 1024
MAX_IMPORT_ROWS = 500_000


class LabelError(EcoSorterError):
    pass


def model_labels(state_dir: Path) -> list:
    """The labels (id, display name) of the model the bin runs (models/current.tflite), else the default seven."""
    from ecosorter.edge.model.loader import read_manifest
    from ecosorter.edge.model.manifest import DEFAULT_LABELS

    current = state_dir / "models" / "current.tflite"
    if current.exists():
        manifest = read_manifest(current.read_bytes(), current)
        if manifest is not None:
            return list(manifest.labels)
    return list(DEFAULT_LABELS)


def known_labels(state_dir: Path) -> list[str]:
    return [lb.id for lb in model_labels(state_dir)]


def unknown_label(label: str, labels: list) -> str:
    """Why LABEL is refused, with the id meant when it is a display name or one of its words
    ("glass", "Kaca"): people type what is printed on the bin, not the id."""
    said = label.strip().casefold()
    meant = [lb.id for lb in labels
             if said and (said == lb.id.casefold() or said == lb.name.casefold()
                          or said in re.findall(r"[^\W\d_]+", lb.name.casefold()))]
    hint = f" (did you mean {meant[0]!r}?)" if len(meant) == 1 else ""
    return f"label {_short(label)} is not one of the model's labels{hint}: {', '.join(lb.id for lb in labels)}"


def _short(text: str, n: int = 80) -> str:
    """A pasted 100 kB "id" or label is named, not echoed whole."""
    return repr(text) if len(text) <= n else f"{text[:n]!r}... ({len(text)} characters)"


def _who(by: str) -> str:
    """--by as given (checked: the same rule as the page and MQTT), else the user running the CLI."""
    if not by:
        try:
            by = f"cli:{getpass.getuser()}"[:64]
        except (KeyError, OSError):
            by = "cli"
    if not (len(by) <= 64 and by.isprintable()):
        raise LabelError(f"--by {_short(by)}: expected up to 64 printable characters (a name, no line breaks)")
    return by


def _events(state_dir: Path) -> EventLog:
    db = state_dir / "events.db"
    if not db.exists():
        raise LabelError(f"no event log at {db} (give --state-dir, or sort some items first)")
    try:
        return EventLog(db, repair=False)
    except LogDamaged as e:
        raise LabelError(f"{e}; nothing labelled. {DAMAGED_HINT}") from None


def label_one(state_dir: Path, event_id: str, label: str, by: str = "") -> str:
    """Set the true label; returns what it replaced ("kaca, by cli:ana at ...") or ''."""
    labels = model_labels(state_dir)
    if label not in [lb.id for lb in labels]:
        raise LabelError(unknown_label(label, labels))
    who = _who(by)
    with _events(state_dir) as events:
        before = events.query("SELECT true_label, labeled_by, labeled_at FROM events WHERE id = ?", (event_id,))
        if not events.set_label(event_id, label, who):
            raise LabelError(f"no event with id {_short(event_id)} in {events.path}")
    old = before[0] if before else None
    if old is None or old["true_label"] in ("", label):
        return ""
    return f"{old['true_label']}, by {old['labeled_by']} at {old['labeled_at']}"


def import_labels(state_dir: Path, path: Path, by: str = "") -> int:
    """Rows with columns id and true_label (or label); empty labels are skipped (not labelled yet)."""
    full = model_labels(state_dir)
    labels = [lb.id for lb in full]
    who = _who(by)
    try:
        with open(path, "rb") as f:
            data = f.read(min(1 << 20, MAX_IMPORT_BYTES + 1))  # bounded: /dev/zero or a pipe never ends
            if b"\0" not in data and len(data) <= MAX_IMPORT_BYTES:
                data += f.read(MAX_IMPORT_BYTES + 1 - len(data))
    except OSError as e:
        raise LabelError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise LabelError(f"{path}: larger than {MAX_IMPORT_BYTES >> 20} MB; not a labels CSV (split it)")
    if b"\0" in data:
        raise LabelError(f"{path}: contains NUL bytes; not a text CSV")
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline=""))
        fields = reader.fieldnames or []
        column = "true_label" if "true_label" in fields else "label" if "label" in fields else None
        if "id" not in fields or column is None:
            raise LabelError(f"{path}: needs a header with columns id and true_label (or label); "
                             f"found {', '.join(f[:40] for f in fields[:20]) or 'no header'}")
        rows = []
        for r in reader:
            if len(rows) >= MAX_IMPORT_ROWS:
                raise LabelError(f"{path}: more than {MAX_IMPORT_ROWS} rows; split it")
            rows.append((reader.line_num, r))
    except (UnicodeDecodeError, csv.Error) as e:
        raise LabelError(f"{path}: cannot read as CSV: {e}") from None
    errors: list[str] = []
    items: list[tuple[str, str, str]] = []
    lines: dict[str, int] = {}
    for line, r in rows:
        event_id, label = (r.get("id") or "").strip(), (r.get(column) or "").strip()
        row_by = who  # the person importing now; a CSV's own labeled_by column is not proof of anything
        if not label:
            continue
        if not event_id:
            errors.append(f"line {line}: no id")
        elif label not in labels:
            errors.append(f"line {line}: {unknown_label(label, full)}")
        elif event_id in lines:
            errors.append(f"line {line}: id {_short(event_id)} already labelled on line {lines[event_id]}")
        else:
            try:
                check_label(label, row_by)
            except ValueError as e:
                errors.append(f"line {line}: {e}")
                continue
            lines[event_id] = line
            items.append((event_id, label, row_by))
    if not errors and items:
        with _events(state_dir) as events:
            unknown = events.set_labels(items)
        errors += [f"line {lines[i]}: no event with id {_short(i)}" for i in unknown]
    if errors:
        more = f" (and {len(errors) - MAX_REPORTED} more)" if len(errors) > MAX_REPORTED else ""
        raise LabelError(f"{path}: nothing imported, {len(errors)} bad row{'s' if len(errors) != 1 else ''}{more}:\n  " +
                         "\n  ".join(errors[:MAX_REPORTED]))
    return len(items)
