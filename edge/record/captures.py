"""Photos kept for retraining: uncertain items always, a sample of confident ones, flagged ones.

Files live under state_dir/captures/<label>/<event id>.jpg. A disk quota evicts oldest first;
flagged photos (a person said "wrong?") go last. A full disk degrades capture first: the
photo is dropped, the event itself is still recorded.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from ecosorter.edge.record.event import Event

log = logging.getLogger("ecosorter.captures")


def encode_jpeg(pixels: np.ndarray, order: str, quality: int = 90) -> bytes:
    rgb = pixels[..., :3] if order == "rgb" else pixels[..., 2::-1]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class CaptureStore:
    RECENT = 24  # frames kept in memory for a later flag or label: more than the page lists (12)

    def __init__(self, root: str | Path, policy: str = "uncertain", confident_fraction: float = 0.05,
                 quota_mb: float = 2048.0, seed: int | None = None):
        self.root = Path(root)
        self.policy, self.fraction = policy, confident_fraction
        self.quota = int(quota_mb * 1e6)
        self.error = ""
        self._rng = random.Random(seed)
        # id -> (label, pixels, order) of recent items, so a late "wrong?" can still keep the photo
        self._recent: OrderedDict[str, tuple[str, np.ndarray, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._flagged_file = self.root / "flagged.txt"
        # relative path -> (mtime, size): the folder is scanned once, then kept up to date here,
        # so a capture costs one write, not a stat of every photo under the quota
        self._index: dict[str, tuple[float, int]] | None = None

    def wants(self, event: Event) -> bool:
        if self.policy == "none":
            return False
        return self.policy == "all" or event.uncertain or self._rng.random() < self.fraction

    def capture(self, event: Event, pixels: np.ndarray, order: str) -> str:
        """Keep the photo if the policy wants it; returns its path relative to root, or ''."""
        with self._lock:  # references only: frames are never written to after capture
            self._recent[event.id] = (event.label, pixels, order)
            while len(self._recent) > self.RECENT:
                self._recent.popitem(last=False)
        if not self.wants(event):
            return ""
        return self._write(event.id, event.label, encode_jpeg(pixels, order))

    def flag(self, event_id: str) -> str:
        """A person flagged a recent item: make sure its photo is kept, and kept longest."""
        with self._lock:
            recent = self._recent.get(event_id)
        rel = ""
        existing = list(self.root.glob(f"*/{event_id}.jpg"))
        if existing:
            rel = str(existing[0].relative_to(self.root))
        elif recent is not None:
            rel = self._write(event_id, recent[0], encode_jpeg(recent[1], recent[2]))
        if rel and rel not in self.flagged():
            try:
                with open(self._flagged_file, "a") as f:
                    f.write(rel + "\n")
            except OSError as e:  # full disk: the photo is kept, its "keep longest" mark is not
                log.warning("flag mark for %s not saved: %s", rel, e.strerror or e)
        return rel

    def _write(self, event_id: str, label: str, jpeg: bytes) -> str:
        rel = f"{label}/{event_id}.jpg"
        path = self.root / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._evict(len(jpeg))
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)
            self._files()[rel] = (path.stat().st_mtime, len(jpeg))
            self.error = ""
            return rel
        except OSError as e:  # disk full / read-only: drop the photo, keep sorting
            self.error = f"capture {path}: {e.strerror or e}"
            log.warning("%s; photo dropped", self.error)
            for leftover in (path.with_suffix(".tmp"),):
                leftover.unlink(missing_ok=True)
            return ""

    def flagged(self) -> set[str]:
        try:
            return set(self._flagged_file.read_text().split())
        except FileNotFoundError:
            return set()

    def _files(self) -> dict[str, tuple[float, int]]:
        if self._index is None:
            self._index = {}
            for p in self.root.glob("*/*.jpg"):
                st = p.stat()
                self._index[str(p.relative_to(self.root))] = (st.st_mtime, st.st_size)
        return self._index

    def make_room(self, nbytes: int) -> int:
        """The disk is full and an event must be written: evict photos (oldest unflagged first)
        until `nbytes` are freed. Returns the bytes freed (0: nothing left to evict)."""
        with self._lock:
            try:
                files = self._files()
            except OSError:
                return 0
            flagged = self.flagged()
            freed = 0
            for rel in sorted(files, key=lambda r: (r in flagged, files[r][0])):
                if freed >= nbytes:
                    break
                try:
                    (self.root / rel).unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
                freed += files.pop(rel)[1]
            return freed

    def _evict(self, incoming: int) -> None:
        files = self._files()
        used = sum(size for _, size in files.values())
        if used + incoming <= self.quota:
            return
        flagged = self.flagged()
        # oldest unflagged first, then (only if still over) oldest flagged
        for rel in sorted(files, key=lambda r: (r in flagged, files[r][0])):
            if used + incoming <= self.quota:
                break
            used -= files.pop(rel)[1]
            (self.root / rel).unlink(missing_ok=True)
