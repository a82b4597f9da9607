"""What the broker knows about every bin: retained `state` and `availability` (the last will), plus
what arrives live (`cmd/result`, and when each bin was last heard from).

One subscriber to `<prefix>/+/state`, `<prefix>/+/availability` and `<prefix>/+/cmd/result`: the
broker hands over the retained messages of every bin at once, so `fleet status` costs one round
trip, not one per bin.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ecosorter.fleet.broker import Broker

log = logging.getLogger("ecosorter.fleet")
BIN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # as edge/commands.py accepts in a signed command
MAX_STATE = 256 * 1024  # a bin's state is a few kB; anything far larger is not a bin's
MAX_TEXT = 300  # a reason or action line; longer text from a bin is cut
# The parts of a bin's state this tool reads, and their JSON types: anything else there is dropped, so
# one bin's malformed (or hostile) retained state cannot end `fleet status` or a rollout.
_DICT, _LIST, _STR, _INT, _NUM, _BOOL = dict, list, str, "int", "num", bool
STATE_SHAPE: dict = {
    "model": {"sha256": _STR, "version": _INT}, "machine": {"state": _STR, "holds": [dict], "faults": [dict]},
    "compartments": [dict], "items_today": _INT, "today": {"counts": {"*": _INT}}, "uncertain_share": _NUM,
    "wrong_today": _INT, "healthy": _BOOL, "at": _STR, "last": {"time": _STR},
    "totals": {"counts": {"*": _INT}, "uncertain": _INT}, "drift": _DICT,
}


def _text(s: str) -> str:
    """A bin's text as this tool prints it: no control characters (no terminal escapes), bounded."""
    s = s[:MAX_TEXT]
    return s if s.isprintable() else "".join(c if c.isprintable() else "?" for c in s)


def scrub(v, depth: int = 0):
    """Every string printable and bounded, non-finite numbers gone (JSON's NaN), nesting bounded."""
    if isinstance(v, str):
        return _text(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if depth > 8:
        return None
    if isinstance(v, dict):
        return {_text(str(k)): scrub(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list):
        return [scrub(x, depth + 1) for x in v]
    return v


def _fits(v, shape) -> bool:
    if shape == _INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if shape == _NUM:
        return isinstance(v, int | float) and not isinstance(v, bool)
    return isinstance(v, dict if isinstance(shape, dict) else list if isinstance(shape, list) else shape)


def _shaped(v, shape):
    """`v` with what does not fit `shape` left out (None when `v` itself does not fit)."""
    if v is None or not _fits(v, shape):
        return None
    if isinstance(shape, dict) and shape:
        if "*" in shape:
            return {k: x for k, x in v.items() if _fits(x, shape["*"])}
        out = {k: v[k] for k in v if k not in shape}
        out.update({k: s for k, s in ((k, _shaped(v.get(k), sh)) for k, sh in shape.items()) if s is not None})
        return out
    if isinstance(shape, list):
        return [x for x in v if _fits(x, shape[0])]
    return v


def clean_state(state: dict) -> dict:
    """A bin's retained state as the fleet tool may read it: the parts it uses have their types."""
    return _shaped(scrub(state), {**STATE_SHAPE}) or {}


@dataclass
class BinSeen:
    bin_id: str
    online: bool | None = None  # None: no availability message seen
    state: dict = field(default_factory=dict)
    state_live_at: float = 0.0  # monotonic time of the last state message that was not retained
    online_at: float = 0.0  # monotonic time the bin was last seen coming online (live)
    last_seen: float = 0.0  # wall time of the last message heard live from the bin

    @property
    def model_sha(self) -> str:
        return str((self.state.get("model") or {}).get("sha256") or "")

    def row(self) -> dict:
        """One bin for `fleet status`: the figures a person running many bins needs."""
        s = self.state
        machine = s.get("machine") or {}
        words = [{"name": e.get("name"), "kind": e.get("kind"), "since": e.get("since"),
                  "reason": e.get("reason_en"), "action": e.get("action_en"), "reason_id": e.get("reason_id")}
                 for e in (machine.get("holds") or []) + (machine.get("faults") or [])]
        model = s.get("model") or {}
        last_item = (s.get("last") or {}).get("time")
        seen = max(filter(None, [self.last_seen and _iso(self.last_seen), s.get("at"), last_item]), default=None)
        return {
            "bin_id": self.bin_id,
            "online": self.online,
            "model_version": model.get("version"),
            "model_sha256": model.get("sha256"),
            "state": machine.get("state"),
            "holds": [w for w in words if w["kind"] == "hold"],
            "faults": [w for w in words if w["kind"] == "fault"],
            # name: as printed on the bin (the page's words; numbered from 1 by bins that do not say)
            "fill": [{"compartment": c.get("index"), "full": bool(c.get("full")), "today": c.get("count", 0),
                      "name": str(c.get("name") or (c["index"] + 1 if isinstance(c.get("index"), int) else "?"))}
                     for c in s.get("compartments") or []],
            "items_today": s.get("items_today", sum(((s.get("today") or {}).get("counts") or {}).values())),
            "uncertain_share": s.get("uncertain_share"),
            "wrong_today": s.get("wrong_today"),
            "healthy": s.get("healthy"),
            "last_seen": seen,
        }


def _iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class FleetView:
    """A live picture of every bin on the broker. `on_change(bin_id, what)` runs on paho's thread."""

    def __init__(self, broker: Broker, client_id: str = "", on_change: Callable[[str, str], None] | None = None,
                 on_result: Callable[[str, dict], None] | None = None):
        self.broker = broker
        self.bins: dict[str, BinSeen] = {}
        self.on_change, self.on_result = on_change, on_result
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = broker.client(client_id)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.bad = 0  # messages that were not a bin's (logged once each kind)
        self.received = 0

    def start(self, settle_s: float = 0.5) -> FleetView:
        self.broker.connect(self.client)
        if not self.subscribed.wait(10):
            raise TimeoutError("the broker did not confirm the subscription")
        self.sync(settle_s)
        return self

    def sync(self, settle_s: float = 0.5, quiet_s: float = 0.2, limit_s: float = 30.0) -> None:
        """Wait until the retained messages have arrived. The broker sends a subscription's retained
        messages before it acknowledges a later QoS 1 publish (they are QoS 0: no in-flight window
        holds them back); then until nothing has come for `quiet_s`, then `settle_s`."""
        info = self.client.publish(f"{self.broker.prefix}/_fleet/sync", b"", qos=1)
        info.wait_for_publish(10)
        end = time.monotonic() + limit_s
        seen = -1
        while seen != self.received and time.monotonic() < end:
            seen = self.received
            time.sleep(quiet_s)
        time.sleep(settle_s)

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        p = self.broker.prefix
        # state and availability at QoS 0: retained ones come at once (a QoS 1 subscription gets them
        # through the broker's in-flight window, 20 at a time); a missed live state is replaced by the
        # next. Command results at QoS 1: a rollout must not miss one.
        client.subscribe([(f"{p}/+/state", 0), (f"{p}/+/availability", 0), (f"{p}/+/cmd/result", 1)])

    def _on_message(self, client, userdata, msg) -> None:
        self.received += 1
        try:  # nothing from the broker is trusted; an exception here would end paho's thread
            parts = msg.topic.split("/")
            bin_id, kind = parts[-2] if parts[-1] != "result" else parts[-3], parts[-1]
            if not BIN_ID.fullmatch(bin_id) or len(msg.payload) > MAX_STATE:
                self._bad(msg.topic, "not a bin id or too large")
                return
            now = time.monotonic()
            with self.lock:
                b = self.bins.setdefault(bin_id, BinSeen(bin_id))
                if not msg.retain:
                    b.last_seen = time.time()
                if kind == "availability":
                    if not msg.payload:
                        return
                    b.online = msg.payload == b"online"
                    if b.online and not msg.retain:
                        b.online_at = now
                elif kind == "state":
                    if not msg.payload:  # cleared by `fleet forget`
                        self.bins.pop(bin_id, None)
                        return
                    state = json.loads(msg.payload)
                    if not isinstance(state, dict):
                        raise ValueError("state is not a JSON object")
                    b.state = clean_state(state)
                    if not msg.retain:
                        b.state_live_at = now
            if kind == "result":
                result = scrub(json.loads(msg.payload))
                if isinstance(result, dict) and self.on_result is not None:
                    self.on_result(bin_id, result)
            elif self.on_change is not None:
                self.on_change(bin_id, kind)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: JSON nested too deep
            self._bad(msg.topic, str(e)[:80])
        except Exception:
            log.exception("message on %s not handled", msg.topic)

    def _bad(self, topic: str, why: str) -> None:
        self.bad += 1
        if self.bad <= 5:
            log.warning("ignored a message on %s: %s", topic[:120], why)

    def rows(self, pattern: str = "*") -> list[dict]:
        import fnmatch

        with self.lock:
            return [self.bins[b].row() for b in sorted(self.bins) if fnmatch.fnmatchcase(b, pattern)]

    def get(self, bin_id: str) -> BinSeen | None:
        with self.lock:
            b = self.bins.get(bin_id)
            if b is None:
                return None
            return BinSeen(b.bin_id, b.online, dict(b.state), b.state_live_at, b.online_at, b.last_seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
