"""`ecosorter simulate` scenario files: strict TOML, every error names its line.

See docs/simulate.md for the format.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecosorter.edge.errors import EcoSorterError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

# The registry of event kinds: key -> allowed values (None = checked by its own rule).
EVENT_KINDS: dict[str, tuple | None] = {
    "drop": None,  # a photo path
    "lid": ("open", "closed"),
    "empty": None,  # a compartment number
    "camera": ("unplug", "replug", "freeze", "dark", "ok"),
    "jam": None,  # "chute" | "trapdoor" | "flap<k>"
    "unjam": None,
    "press": ("wrong", "clear"),
    "power": ("fail", "ok"),
    "signal": ("TERM", "INT", "HUP"),
}
EVENT_EXTRA = {"at", "hold_s"}
BIN_KEYS = {"servo_speed_deg_s": (float, 1.0), "compartment_capacity": (int, 1), "fps": (float, 0.1),
            "hand_off_s": (float, 0.0), "next_item_gap_s": (float, 0.0), "tail_s": (float, 0.0),
            "until": (float, 0.0)}  # key: (type, smallest allowed)
ITEM_KEYS = {"folder": str, "every_s": float, "count": int, "start_s": float}
TOP_KEYS = ("bin", "events", "items", "config")
SERVO = re.compile(r"chute|trapdoor|flap[0-9]+")


class ScenarioError(EcoSorterError):
    pass


@dataclass(frozen=True)
class SimEvent:
    at: float
    kind: str
    value: Any
    line: int
    hold_s: float | None = None


@dataclass
class BinSpec:
    servo_speed_deg_s: float | None = None  # None: the config's own speed (a true calibration)
    compartment_capacity: int = 40
    fps: float | None = None  # None: camera.fps
    hand_off_s: float = 1.5  # leds: how long a person takes to carry the item
    next_item_gap_s: float = 1.0  # a waiting person puts the next item down this long after the tray clears
    tail_s: float = 30.0  # run on after the last event
    until: float | None = None


@dataclass
class Scenario:
    path: Path
    bin: BinSpec
    events: list[SimEvent]
    config: dict = field(default_factory=dict)

    @property
    def end(self) -> float:
        if self.bin.until is not None:
            return self.bin.until
        return (self.events[-1].at if self.events else 0.0) + self.bin.tail_s


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ScenarioError(f"scenario {p}: file not found") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"scenario {p}: not valid TOML: {e}") from None
    lines = _event_lines(text)

    def err(line: int | None, msg: str) -> ScenarioError:
        return ScenarioError(f"scenario {p}:{line}: {msg}" if line else f"scenario {p}: {msg}")

    for key in data:
        if key not in TOP_KEYS:
            raise err(_line_of(text, key), f"unknown table {key!r}{_hint(key, TOP_KEYS)}")
    spec = BinSpec()
    for key, value in data.get("bin", {}).items():
        if key not in BIN_KEYS:
            raise err(_line_of(text, key), f"[bin] unknown key {key!r}{_hint(key, BIN_KEYS)}")
        tp, least = BIN_KEYS[key]
        bad = lambda m, k=key: err(_line_of(text, k), f"[bin] {k}: {m}")  # noqa: E731
        v = _typed(value, tp, bad)
        if v < least:
            raise bad(f"{v!r} is below {least}")
        setattr(spec, key, v)
    events: list[SimEvent] = []
    for i, raw in enumerate(data.get("events", [])):
        line = lines[i] if i < len(lines) else None
        events.append(_event(raw, line, p.parent, err))
    for a, b in zip(events, events[1:], strict=False):
        if b.at < a.at:
            raise err(b.line, f"at = {b.at:g} comes before the previous event's {a.at:g}: times must not go backwards")
    if "items" in data:
        events = _merge(events, _items(data["items"], p.parent, lambda m: err(_line_of(text, "[items]"), m)))
    config = data.get("config", {})
    if not isinstance(config, dict):
        raise err(_line_of(text, "config"), "[config] must be a table of config sections")
    return Scenario(p, spec, events, config)


def _event(raw: Any, line: int | None, base: Path, err) -> SimEvent:
    if not isinstance(raw, dict):
        raise err(line, "each [[events]] must be a table")
    kinds = [k for k in raw if k in EVENT_KINDS]
    unknown = [k for k in raw if k not in EVENT_KINDS and k not in EVENT_EXTRA]
    if unknown:
        raise err(line, f"unknown event key {unknown[0]!r}{_hint(unknown[0], [*EVENT_KINDS, *EVENT_EXTRA])}")
    if len(kinds) != 1:
        raise err(line, f"an event has exactly one of {', '.join(EVENT_KINDS)} (found {kinds or 'none'})")
    if "at" not in raw:
        raise err(line, "an event needs at = <virtual seconds>")
    at = _typed(raw["at"], float, lambda m: err(line, f"at: {m}"))
    if at < 0:
        raise err(line, f"at = {at:g}: must be >= 0")
    kind = kinds[0]
    value = raw[kind]
    allowed = EVENT_KINDS[kind]
    if allowed is not None and value not in allowed:
        raise err(line, f"{kind} = {value!r}: allowed {', '.join(repr(a) for a in allowed)}")
    if kind == "drop":
        value = _photo(_typed(value, str, lambda m: err(line, f"drop: {m}")), base, lambda m: err(line, m))
    elif kind == "empty":
        value = _typed(value, int, lambda m: err(line, f"empty: {m}"))
    elif kind in ("jam", "unjam") and not (isinstance(value, str) and SERVO.fullmatch(value)):
        raise err(line, f"{kind} = {value!r}: 'chute', 'trapdoor' or 'flap<k>'")
    hold = None
    if "hold_s" in raw:
        if kind != "press":
            raise err(line, "hold_s goes with press")
        hold = _typed(raw["hold_s"], float, lambda m: err(line, f"hold_s: {m}"))
    return SimEvent(at, kind, value, line or 0, hold)


def _items(raw: Any, base: Path, err) -> list[SimEvent]:
    if not isinstance(raw, dict):
        raise err("[items] must be a table")
    for key in raw:
        if key not in ITEM_KEYS:
            raise err(f"[items] unknown key {key!r}{_hint(key, ITEM_KEYS)}")
    for key in ("folder", "every_s", "count"):
        if key not in raw:
            raise err(f"[items] needs {key}")
    folder = base / _typed(raw["folder"], str, lambda m: err(f"[items] folder: {m}"))
    every = _typed(raw["every_s"], float, lambda m: err(f"[items] every_s: {m}"))
    count = _typed(raw["count"], int, lambda m: err(f"[items] count: {m}"))
    start = _typed(raw.get("start_s", every), float, lambda m: err(f"[items] start_s: {m}"))
    if every <= 0 or count < 0 or start < 0:
        raise err("[items] every_s must be > 0, count and start_s >= 0")
    photos = sorted(q for q in folder.rglob("*") if q.suffix.lower() in SUFFIXES) if folder.is_dir() else []
    if not photos:
        raise err(f"[items] folder {folder}: no photos ({', '.join(sorted(SUFFIXES))})")
    # a fixed, spread-out order: every class appears early, and the same scenario is the same run
    order = photos[::7] + [q for i, q in enumerate(photos) if i % 7]
    return [SimEvent(start + i * every, "drop", order[i % len(order)], 0) for i in range(count)]


def _merge(a: list[SimEvent], b: list[SimEvent]) -> list[SimEvent]:
    return sorted(a + b, key=lambda e: e.at)  # stable: listed events before generated ones at a tie


def _photo(rel: str, base: Path, err) -> Path:
    path = (base / rel).resolve()
    if not path.is_file():
        raise err(f"drop = {rel!r}: no such photo ({path})")
    if path.suffix.lower() not in SUFFIXES:
        raise err(f"drop = {rel!r}: not a photo ({', '.join(sorted(SUFFIXES))})")
    return path


def _typed(value: Any, tp: type, err) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, tp):
        raise err(f"must be {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is float and not math.isfinite(value):
        raise err(f"must be a finite number, got {value!r}")
    return value


def _hint(key: str, names) -> str:
    near = difflib.get_close_matches(key, list(names), n=1)
    return f"; did you mean {near[0]!r}?" if near else f"; allowed: {', '.join(names)}"


def _event_lines(text: str) -> list[int]:
    return [i + 1 for i, ln in enumerate(text.splitlines()) if ln.strip().startswith("[[events]]")]


def _line_of(text: str, needle: str) -> int | None:
    for i, ln in enumerate(text.splitlines()):
        if needle in ln:
            return i + 1
    return None
