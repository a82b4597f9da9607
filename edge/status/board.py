"""What the kiosk shows: the machine's state, the last items, counts per label and per compartment.

A sink the loop writes to. `record()` only copies a few numbers and keeps a reference to the
frame (sources hand out a new array per frame); JPEGs are made on the server's thread when the
page asks (every poll), and at most RAW_KEPT frames wait for that: with no page open, older
items simply have no photo.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from datetime import datetime, timezone

import numpy as np

from ecosorter.edge.machine import STATE_WORDS, compartment_label
from ecosorter.edge.record.event import Event

RECENT = 12  # items kept for the "what was it?" list, with their photos
RAW_KEPT = 3  # frames kept by reference until the server thread makes their JPEG
THUMB_MAX_PX = 480  # longest side of a kept photo
# Decision latency histogram (seconds); cumulative since start, as Prometheus expects.
LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
READY = {"state": "ready", "holds": [], "faults": [], "warnings": []}


class StatusBoard:
    def __init__(self, bin_id: str, labels: dict[str, str], compartments: dict[str, int] | None = None,
                 compartment_names: list[str] | tuple[str, ...] = (), fill_sensors: Iterable[int] = ()):
        self.bin_id = bin_id
        self.compartment_names = tuple(compartment_names)  # as printed on the bin; [] = numbered from 1
        self.fill_sensors = frozenset(fill_sensors)  # compartments with a fill sensor: the page shows their fill
        self.labels = labels  # id -> display name, "Kaca (glass)"
        # label -> compartment; without a map the board learns it from confident items.
        self.compartment_of: dict[str, int] = dict(compartments or {})
        self._known = compartments is not None
        self.started = time.time()
        self._lock = threading.Lock()
        self.last: dict | None = None
        self.seq = 0
        self.total = 0
        self.day = _today()
        self.counts: dict[str, int] = dict.fromkeys(labels, 0)
        self.counts_total: dict[str, int] = dict.fromkeys(labels, 0)
        self.uncertain = self.uncertain_total = 0
        self.unrouted = self.unrouted_total = 0
        self.into: dict[int, int] = {}  # compartment -> items that physically went there today
        self.into_total: dict[int, int] = {}
        self.rerouted_in: dict[int, int] = {}  # ... of which were meant for another compartment
        self.full: dict[int, bool] = {}
        self.links: dict[str, dict] = {}
        self.machine: dict = copy.deepcopy(READY)
        self.seen_holds: set[str] = set()  # every hold/fault name seen: /metrics keeps them at 0
        self.seen_faults: set[str] = set()
        self.seen_warnings: set[str] = set()
        self.health: dict[str, dict] = {}
        self.model: dict = {}  # edge/model/trust.py's describe_running: version, signed or UNSIGNED, verified
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # last one: +Inf
        self.latency_sum_s = 0.0
        self._recent: OrderedDict[str, dict] = OrderedDict()
        self._photos: dict[str, tuple[np.ndarray, str] | bytes] = {}
        self._raw: deque[str] = deque()  # ids whose photo is still a frame reference

    # ------------------------------------------------------------------ written by the loop
    def record(self, event: Event, pixels: np.ndarray | None = None, order: str = "rgb") -> None:
        with self._lock:
            self._rollover()
            self.seq += 1
            self.total += 1
            for counts in (self.counts, self.counts_total):
                counts[event.label] = counts.get(event.label, 0) + 1
            self.uncertain += event.uncertain
            self.uncertain_total += event.uncertain
            if event.routed_to < 0:
                self.unrouted += 1
                self.unrouted_total += 1
            else:
                for counts in (self.into, self.into_total):
                    counts[event.routed_to] = counts.get(event.routed_to, 0) + 1
                if event.routed_to != event.compartment:
                    self.rerouted_in[event.routed_to] = self.rerouted_in.get(event.routed_to, 0) + 1
            if not self._known and not event.uncertain and event.compartment >= 0:
                self.compartment_of[event.label] = event.compartment
            self.last = {**event.to_dict(), "name": self.labels.get(event.label, event.label), "seq": self.seq}
            self._recent[event.id] = {
                "id": event.id, "time": event.time, "label": event.label, "confidence": event.confidence,
                "uncertain": event.uncertain, "compartment": event.compartment, "routed_to": event.routed_to,
                "note": event.note, "true_label": None, "flagged": False, "photo": pixels is not None}
            if pixels is not None:
                self._photos[event.id] = (pixels, order)
                self._raw.append(event.id)
            while len(self._recent) > RECENT:
                old, _ = self._recent.popitem(last=False)
                self._photos.pop(old, None)
            while len(self._raw) > RAW_KEPT:  # nobody asked for it in time: bounded memory, no photo
                old = self._raw.popleft()
                if isinstance(self._photos.get(old), tuple):
                    del self._photos[old]
                    if old in self._recent:
                        self._recent[old]["photo"] = False
            total_s = event.latency_ms.get("total", 0.0) / 1000
            self.latency_buckets[np.searchsorted(LATENCY_BUCKETS_S, total_s)] += 1
            self.latency_sum_s += total_s

    def set_machine(self, snapshot: dict) -> None:
        """The machine's state as `ecosorter.edge.machine` reports it: stored as given."""
        snap = copy.deepcopy(snapshot)
        with self._lock:
            self.machine = snap
            self.seen_holds.update(e.get("name", "") for e in snap.get("holds", []))
            self.seen_faults.update(e.get("name", "") for e in snap.get("faults", []))
            self.seen_warnings.update(e.get("name", "") for e in snap.get("warnings", []))

    def set_fill(self, full: dict[int, bool]) -> None:
        with self._lock:
            self.full.update({int(k): bool(v) for k, v in full.items()})

    def set_link(self, name: str, state: str, detail: str = "") -> None:
        """lid: closed/open/none; camera: ok/down/...; mqtt: connected/disconnected/off."""
        with self._lock:
            self.links[name] = {"state": state, "detail": detail}

    def set_health(self, part: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            self.health[part] = {"ok": ok, "detail": detail}

    def set_model(self, info: dict) -> None:
        with self._lock:
            self.model = dict(info)

    # ------------------------------------------------------------------ written by page actions
    def flagged(self, event_id: str) -> None:
        """A person said the item was wrong: it now needs a true label."""
        with self._lock:
            if event_id in self._recent:
                self._recent[event_id]["flagged"] = True

    def labelled(self, event_id: str, label: str) -> None:
        with self._lock:
            if event_id in self._recent:
                self._recent[event_id]["true_label"] = label

    # ------------------------------------------------------------------ read by the server
    def photo(self, event_id: str) -> bytes | None:
        """A recent item's photo as JPEG, encoded on the first request (the caller's thread)."""
        with self._lock:
            kept = self._photos.get(event_id)
        if kept is None or isinstance(kept, bytes):
            return kept
        jpeg = _jpeg(*kept)
        with self._lock:
            if event_id in self._photos:
                self._photos[event_id] = jpeg
            if event_id in self._raw:
                self._raw.remove(event_id)
        return jpeg

    def encode_pending(self) -> None:
        """Make the JPEGs of frames still held by reference: called by the server, never the loop."""
        with self._lock:
            pending = list(self._raw)
        for event_id in pending:
            self.photo(event_id)

    def latency(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (le, count) buckets ending with +Inf, and the sum in seconds."""
        with self._lock:
            counts = np.cumsum(self.latency_buckets).tolist()
            return [(str(le), n) for le, n in zip((*LATENCY_BUCKETS_S, "+Inf"), counts, strict=True)], self.latency_sum_s

    def seen_names(self) -> dict[str, set[str]]:
        with self._lock:
            return {"holds": set(self.seen_holds), "faults": set(self.seen_faults),
                    "warnings": set(self.seen_warnings)}

    @property
    def last_jpeg(self) -> bytes:
        with self._lock:
            last = self.last["id"] if self.last else None
        return (self.photo(last) if last else None) or b""

    def snapshot(self) -> dict:
        with self._lock:
            self._rollover()
            return {
                "bin_id": self.bin_id,
                "seq": self.seq,
                "uptime_s": round(time.time() - self.started, 1),
                "last": dict(self.last) if self.last else None,
                "today": {"date": self.day, "counts": dict(self.counts), "uncertain": self.uncertain,
                          "unrouted": self.unrouted},
                "total": self.total,
                "totals": {"counts": dict(self.counts_total), "uncertain": self.uncertain_total,
                           "unrouted": self.unrouted_total},
                "labels": self.labels,
                "health": {k: dict(v) for k, v in self.health.items()},
                "healthy": all(v["ok"] for v in self.health.values()),
                "machine": copy.deepcopy(self.machine),
                "words": {k: list(v) for k, v in STATE_WORDS.items()},
                "compartments": self._compartments(),
                "unrouted": self.unrouted,
                "links": {k: dict(v) for k, v in self.links.items()},
                "model": dict(self.model),
                "recent": [dict(r) for r in reversed(self._recent.values())],  # newest first
            }

    def _compartments(self) -> list[dict]:
        indices = set(self.compartment_of.values()) | set(self.into_total) | set(self.full) | self.fill_sensors
        if self._known and self.compartment_of:  # every compartment of the bin, used or not
            indices |= set(range(max(self.compartment_of.values()) + 1))
        return [{"index": i, "name": compartment_label(i, self.compartment_names), "sensor": i in self.fill_sensors,
                 "labels": [lb for lb, c in self.compartment_of.items() if c == i],
                 "count": self.into.get(i, 0), "rerouted_in": self.rerouted_in.get(i, 0),
                 "total": self.into_total.get(i, 0), "full": self.full.get(i, False)}
                for i in sorted(x for x in indices if x >= 0)]

    def _rollover(self) -> None:
        # Called under the lock: today's counts start again at local midnight.
        if _today() != self.day:
            self.day, self.counts = _today(), dict.fromkeys(self.labels, 0)
            self.uncertain = self.unrouted = 0
            self.into, self.rerouted_in = {}, {}


def _today() -> str:
    return datetime.now(timezone.utc).astimezone().date().isoformat()


def _jpeg(pixels: np.ndarray, order: str) -> bytes:
    import io

    from PIL import Image

    rgb = pixels[..., :3] if order == "rgb" else pixels[..., 2::-1]
    im = Image.fromarray(np.ascontiguousarray(rgb))
    im.thumbnail((THUMB_MAX_PX, THUMB_MAX_PX))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()
