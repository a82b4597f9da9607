"""One sorted item, as every sink records it."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone


def wall_iso(t: float | None = None) -> str:
    """UTC ISO time of epoch seconds `t` (now if None), to the millisecond, as every record writes it."""
    when = datetime.now(timezone.utc) if t is None else datetime.fromtimestamp(t, timezone.utc)
    return when.isoformat(timespec="milliseconds")


def new_event_id() -> str:
    """Time-ordered and unique across restarts and bins: 12 hex of ms time, 20 random."""
    return f"{int(time.time() * 1000):012x}{uuid.uuid4().hex[:20]}"


@dataclass
class Event:
    label: str
    confidence: float
    probabilities: dict[str, float]
    uncertain: bool
    compartment: int  # decided
    routed_to: int  # where the item actually went (-1: not routed)
    routed_ok: bool
    frames: int
    model_sha256: str
    latency_ms: dict[str, float]
    bin_id: str = ""
    image: str = ""  # relative path of the captured image, if captured
    note: str = ""
    source_name: str = ""  # the simulated photo's file name
    id: str = field(default_factory=new_event_id)
    time: str = field(default_factory=wall_iso)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))
