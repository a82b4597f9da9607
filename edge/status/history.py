"""The history page's data: recent items from the event log (with their kept photos) and the running model.

Read on the status server's threads, never on the loop: each request opens its own read-only
SQLite connection (WAL lets it read while the loop writes), with a short busy timeout so a page
can never hold the event log. Every query parameter is checked against a fixed list; the photo
path comes from the event log and must stay inside the captures folder.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

log = logging.getLogger("ecosorter.status")
EVENT_ID = re.compile(r"[0-9a-f]{32}")
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
PARAMS = ("class", "wrong", "limit", "before")
PHOTO_MAX_BYTES = 8 << 20


class HistoryError(ValueError):
    """A bad request: the page's answer is 400 with this text."""


class History:
    def __init__(self, events_path: Path, captures_dir: Path, labels: dict[str, str],
                 model: Callable[[], dict] | None = None, compartment_name: Callable[[int], str] = lambda c: str(c + 1)):
        self.events_path, self.captures_dir = Path(events_path), Path(captures_dir)
        self.labels = labels
        self._model = model
        self.compartment_name = compartment_name

    def _connect(self) -> sqlite3.Connection:
        if not self.events_path.is_file():
            raise FileNotFoundError(self.events_path)
        db = sqlite3.connect(f"{self.events_path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.5,
                             check_same_thread=False)
        db.row_factory = sqlite3.Row
        return db

    def items(self, query: str) -> dict:
        """`class=<label>` (the true label where a person gave one, else the predicted one), `wrong=1`
        (flagged, or labelled other than predicted), `limit` (1-200), `before` (a seq, for the next page)."""
        params = parse_query(query, self.labels)
        where, args = [], []
        if "class" in params:
            where.append("(CASE WHEN true_label != '' THEN true_label ELSE label END) = ?")
            args.append(params["class"])
        if params.get("wrong"):
            where.append("(flagged != 0 OR (true_label != '' AND true_label != label))")
        if "before" in params:
            where.append("seq < ?")
            args.append(params["before"])
        sql = ("SELECT seq, id, time, label, confidence, uncertain, compartment, routed_to, routed_ok, image, note, "
               "flagged, true_label, labeled_by, model_sha256 FROM events"
               + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY seq DESC LIMIT ?")
        try:
            db = self._connect()
        except FileNotFoundError:
            return {"items": [], "more": False, "note": "no event log yet"}
        try:
            rows = db.execute(sql, (*args, params["limit"] + 1)).fetchall()
        finally:
            db.close()
        more = len(rows) > params["limit"]
        items, skipped = [], 0
        for r in rows[:params["limit"]]:
            try:  # SQLite keeps any type in any column: one edited row is left out, not the page
                items.append(self._item(r))
            except (TypeError, ValueError):
                skipped += 1
        if skipped:
            log.warning("history: %d event log row(s) with values of the wrong type left out", skipped)
        return {"items": items, "more": more, **({"skipped": skipped} if skipped else {})}

    def _item(self, r: sqlite3.Row) -> dict:
        wrong = bool(r["true_label"]) and r["true_label"] != r["label"]
        flags = [name for name, on in (("uncertain", r["uncertain"]), ("flagged", r["flagged"]), ("wrong", wrong),
                                        ("not_routed", not r["routed_ok"] or r["routed_to"] < 0),
                                        ("rerouted", r["routed_ok"] and 0 <= r["routed_to"] != r["compartment"]))
                 if on]
        return {"seq": r["seq"], "id": r["id"], "time": r["time"], "label": r["label"],
                "confidence": r["confidence"], "compartment": r["compartment"], "routed_to": r["routed_to"],
                "compartment_name": self.compartment_name(r["routed_to"]) if r["routed_to"] >= 0 else "",
                "true_label": r["true_label"], "labeled_by": r["labeled_by"], "note": r["note"],
                "flags": flags, "photo": bool(r["image"]) and self._photo_path(r["image"]) is not None,
                "model": r["model_sha256"][:12]}

    def photo(self, event_id: str) -> bytes | None:
        if not EVENT_ID.fullmatch(event_id):
            return None
        try:
            db = self._connect()
        except FileNotFoundError:
            return None
        try:
            row = db.execute("SELECT image FROM events WHERE id = ?", (event_id,)).fetchone()
        finally:
            db.close()
        path = self._photo_path(row["image"]) if row and row["image"] else None
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read(PHOTO_MAX_BYTES + 1)
        except OSError:  # evicted by the quota meanwhile
            return None
        return data if len(data) <= PHOTO_MAX_BYTES and data[:3] == b"\xff\xd8\xff" else None

    def _photo_path(self, image: str) -> Path | None:
        """The kept photo's file, only if it is a .jpg inside the captures folder (the log is not trusted)."""
        root = self.captures_dir.resolve()
        try:  # a NUL byte, a name too long: no photo for that row, never the whole page's failure
            path = (root / image).resolve()
            if path.suffix != ".jpg" or not path.is_relative_to(root) or not path.is_file():
                return None
        except (OSError, ValueError, TypeError):  # TypeError: not text at all (SQLite keeps any type)
            return None
        return path

    def model(self) -> dict:
        return self._model() if self._model is not None else {}


def parse_query(query: str, labels: dict[str, str]) -> dict:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=len(PARAMS))
    except ValueError as e:
        raise HistoryError(f"bad query: {e}") from None
    out: dict = {"limit": DEFAULT_LIMIT}
    for key, value in pairs:
        if key not in PARAMS:
            raise HistoryError(f"unknown parameter {key[:40]!r}; known: {', '.join(PARAMS)}")
        if key == "class":
            if value not in labels:
                raise HistoryError(f"class must be one of {', '.join(labels)}")
            out["class"] = value
        elif key == "wrong":
            if value not in ("", "0", "1"):
                raise HistoryError("wrong must be 1 or 0")
            out["wrong"] = value == "1"
        else:
            if not (value.isascii() and value.isdigit() and len(value) <= 12):
                raise HistoryError(f"{key} must be a whole number")
            n = int(value)
            if key == "limit" and not 1 <= n <= MAX_LIMIT:
                raise HistoryError(f"limit must be 1-{MAX_LIMIT}")
            out[key] = n
    return out


def model_panel(model, runtime: str = "", judged: dict | None = None) -> dict:
    """What the model panel shows, from the running model and its manifest. Trust (verified, signed)
    is what the bin judged, never the manifest's own claims: `verified` from the converter's gate as
    edge/model/trust.py reads it, `signed` from `judged` (describe_running: the install record)."""
    from ecosorter.edge.model.trust import verification_status

    m = model.manifest
    d = m.to_dict() if hasattr(m, "to_dict") else {}
    path = Path(model.path)
    try:
        installed = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.stat(path).st_mtime))
    except OSError:
        installed = ""
    source = d.get("source") or {}
    trust: dict = {}
    verified, _ = verification_status(m)
    if verified is not None:
        trust["verified"] = verified
    if judged:
        trust["signed"] = f"key {judged.get('key_id', '')}" if judged.get("signed") else False
    return {"file": path.name, "sha256": model.sha256, "version": d.get("version", 0), "installed": installed,
            "runtime": runtime, "source": {k: source[k] for k in ("file", "format", "sha256", "tensorflow", "keras",
                                                                "quantization", "calibration_images") if k in source},
            "verification": d.get("verification") or {}, "trust": trust,
            "labels": [lb["id"] for lb in d.get("labels", [])]}
