"""`ecosorter export --since DATE OUT/`: captured photos as class folders + a CSV, ready for training
(flow_from_directory / flow_from_dataframe) and for calibrating the next int8 model."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from ecosorter.edge.record.events import EventLog


def export(state_dir: Path, out: Path, since: str = "") -> int:
    events = EventLog(state_dir / "events.db")
    captures = state_dir / "captures"
    flagged_files = set((captures / "flagged.txt").read_text().split()) if (captures / "flagged.txt").exists() else set()
    rows = events.query("SELECT id, time, label, confidence, uncertain, flagged, image, model_sha256 "
                        "FROM events WHERE image != '' AND time >= ? ORDER BY seq", (since,))
    events.close()
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "predicted", "confidence", "uncertain", "flagged", "time", "event_id", "model_sha256"])
        for r in rows:
            src = captures / r["image"]
            if not src.exists():
                continue  # evicted by the quota
            dst = out / r["label"] / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            flagged = bool(r["flagged"]) or r["image"] in flagged_files
            w.writerow([f"{r['label']}/{src.name}", r["label"], f"{r['confidence']:.4f}", int(r["uncertain"]),
                        int(flagged), r["time"], r["id"], r["model_sha256"]])
            n += 1
    return n
