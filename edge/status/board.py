"""What the kiosk shows: the last item, today's counts, health. A sink the loop writes to."""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import datetime, timezone

import numpy as np

from ecosorter.edge.record.event import Event


class StatusBoard:
    def __init__(self, bin_id: str, labels: dict[str, str], compartments: dict[str, int] | None = None):
        self.bin_id = bin_id
        self.compartments = compartments or {}
        self.machine: dict = {"state": "ready", "holds": [], "faults": []}
        self.fill: dict[int, bool] = {}
        self.links: dict[str, dict] = {}
        self.labels = labels  # id -> display name
        self.started = time.time()
        self._lock = threading.Lock()
        self.last: dict | None = None
        self._last_pixels: tuple[np.ndarray, str] | None = None
        self._last_jpeg: bytes | None = None
        self.seq = 0
        self.day = _today()
        self.counts: dict[str, int] = dict.fromkeys(labels, 0)
        self.uncertain = 0
        self.total = 0
        self.health: dict[str, dict] = {}
        self.latency_ms: deque[float] = deque(maxlen=200)

    def record(self, event: Event, pixels: np.ndarray | None = None, order: str = "rgb") -> None:
        # Keep a reference only; the JPEG is made when a browser asks for it, off the loop.
        with self._lock:
            if _today() != self.day:
                self.day, self.counts, self.uncertain = _today(), dict.fromkeys(self.labels, 0), 0
            self.seq += 1
            self.total += 1
            self.counts[event.label] = self.counts.get(event.label, 0) + 1
            self.uncertain += event.uncertain
            self.last = {**event.to_dict(), "name": self.labels.get(event.label, event.label), "seq": self.seq}
            self._last_pixels = (pixels, order) if pixels is not None else None
            self._last_jpeg = None
            self.latency_ms.append(event.latency_ms.get("total", 0.0))

    @property
    def last_jpeg(self) -> bytes:
        with self._lock:
            if self._last_jpeg is None:
                self._last_jpeg = _jpeg(*self._last_pixels) if self._last_pixels is not None else b""
            return self._last_jpeg

    def set_machine(self, snapshot: dict) -> None:
        with self._lock:
            self.machine = snapshot

    def set_fill(self, full: dict[int, bool]) -> None:
        with self._lock:
            self.fill = dict(full)

    def set_link(self, name: str, state: str, detail: str = "") -> None:
        with self._lock:
            self.links[name] = {"state": state, "detail": detail}

    def set_health(self, part: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            self.health[part] = {"ok": ok, "detail": detail}

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "bin_id": self.bin_id,
                "seq": self.seq,
                "uptime_s": round(time.time() - self.started, 1),
                "last": self.last,
                "today": {"date": self.day, "counts": dict(self.counts), "uncertain": self.uncertain},
                "total": self.total,
                "labels": self.labels,
                "health": {k: dict(v) for k, v in self.health.items()},
                "healthy": all(v["ok"] for v in self.health.values()),
                "machine": self.machine,
                "links": {k: dict(v) for k, v in self.links.items()},
            }


def _today() -> str:
    return datetime.now(timezone.utc).astimezone().date().isoformat()


def _jpeg(pixels: np.ndarray, order: str) -> bytes:
    import io

    from PIL import Image

    rgb = pixels[..., :3] if order == "rgb" else pixels[..., 2::-1]
    im = Image.fromarray(np.ascontiguousarray(rgb))
    im.thumbnail((480, 360))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()
