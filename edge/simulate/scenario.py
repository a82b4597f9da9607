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
    "take": ("tray",),  # a person lifts the item off the tray (nothing if it is empty)
    # the event log's file replaced by junk (a card failing, a bad restore); damage written in place
    # under the running bin is not noticed until the next start (docs/reliability.md)
    "log": ("replace",),
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
    line: int  # the line of the event's kind key (lid = ..., drop = ...): what errors about it name
    hold_s: float | None = None
    at_line: int = 0  # the line of its `at`


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
    text_lines = text.splitlines()

    def err(line: int | None, msg: str) -> ScenarioError:
        return ScenarioError(f"scenario {p}:{line}: {msg}" if line else f"scenario {p}: {msg}")

    for key in data:
        if key not in TOP_KEYS:
            raise err(_line_of(text, key), f"unknown table {key!r}{_hint(key, TOP_KEYS)}")
    bin_line = _line_of(text, "[bin]") or 0
    spec = BinSpec()
    for key, value in data.get("bin", {}).items():
        if key not in BIN_KEYS:
            raise err(key_line(text_lines, bin_line, key), f"[bin] unknown key {key!r}{_hint(key, BIN_KEYS)}")
        tp, least = BIN_KEYS[key]
        bad = lambda m, k=key: err(key_line(text_lines, bin_line, k), f"[bin] {k}: {m}")  # noqa: E731
        v = _typed(value, tp, bad)
        if v < least:
            raise bad(f"{v!r} is below {least}")
        setattr(spec, key, v)
    events: list[SimEvent] = []
    for i, raw in enumerate(data.get("events", [])):
        line = lines[i] if i < len(lines) else None
        events.append(_event(raw, line, p.parent, err, lambda k, h=line: key_line(text_lines, h, k)))
    for a, b in zip(events, events[1:], strict=False):
        if b.at < a.at:
            raise err(b.at_line, f"at = {b.at:g} comes before the previous event's {a.at:g}: times must not go backwards")
    if "items" in data:
        items_line = _line_of(text, "[items]")
        events = _merge(events, _items(data["items"], p.parent,
                                       lambda m, k=None: err(key_line(text_lines, items_line, k) if k else items_line, m)))
    config = data.get("config", {})
    if not isinstance(config, dict):
        raise err(_line_of(text, "config"), "[config] must be a table of config sections")
    return Scenario(p, spec, events, config)


def _event(raw: Any, line: int | None, base: Path, err, at_key) -> SimEvent:
    """`at_key(k)`: the line of key k in this event's table (its header line if not found)."""
    if not isinstance(raw, dict):
        raise err(line, "each [[events]] must be a table")
    kinds = [k for k in raw if k in EVENT_KINDS]
    unknown = [k for k in raw if k not in EVENT_KINDS and k not in EVENT_EXTRA]
    if unknown:
        raise err(at_key(unknown[0]), f"unknown event key {unknown[0]!r}{_hint(unknown[0], [*EVENT_KINDS, *EVENT_EXTRA])}")
    if len(kinds) != 1:
        raise err(at_key(kinds[1]) if len(kinds) > 1 else line,
                  f"an event has exactly one of {', '.join(EVENT_KINDS)} (found {kinds or 'none'})")
    if "at" not in raw:
        raise err(line, "an event needs at = <virtual seconds>")
    at_line = at_key("at")
    at = _typed(raw["at"], float, lambda m: err(at_line, f"at: {m}"))
    if at < 0:
        raise err(at_line, f"at = {at:g}: must be >= 0")
    kind = kinds[0]
    kline = at_key(kind)
    value = raw[kind]
    allowed = EVENT_KINDS[kind]
    if allowed is not None and value not in allowed:
        raise err(kline, f"{kind} = {value!r}: allowed {', '.join(repr(a) for a in allowed)}")
    if kind == "drop":
        value = _photo(_typed(value, str, lambda m: err(kline, f"drop: {m}")), base, lambda m: err(kline, m))
    elif kind == "empty":
        value = _typed(value, int, lambda m: err(kline, f"empty: {m}"))
    elif kind in ("jam", "unjam") and not (isinstance(value, str) and SERVO.fullmatch(value)):
        raise err(kline, f"{kind} = {value!r}: 'chute', 'trapdoor' or 'flap<k>'")
    hold = None
    if "hold_s" in raw:
        hline = at_key("hold_s")
        if kind != "press":
            raise err(hline, "hold_s goes with press")
        hold = _typed(raw["hold_s"], float, lambda m: err(hline, f"hold_s: {m}"))
        if not 0 < hold <= 3600:
            raise err(hline, f"hold_s = {hold:g}: a press lasts more than 0 and at most 3600 s")
    return SimEvent(at, kind, value, kline or 0, hold, at_line or 0)


def _items(raw: Any, base: Path, err) -> list[SimEvent]:
    """`err(message, key)`: an error on that key's own line (the [items] header without a key)."""
    if not isinstance(raw, dict):
        raise err("[items] must be a table")
    for key in raw:
        if key not in ITEM_KEYS:
            raise err(f"[items] unknown key {key!r}{_hint(key, ITEM_KEYS)}", key)
    for key in ("folder", "every_s", "count"):
        if key not in raw:
            raise err(f"[items] needs {key}")
    folder = base / _typed(raw["folder"], str, lambda m: err(f"[items] folder: {m}", "folder"))
    every = _typed(raw["every_s"], float, lambda m: err(f"[items] every_s: {m}", "every_s"))
    count = _typed(raw["count"], int, lambda m: err(f"[items] count: {m}", "count"))
    start = _typed(raw.get("start_s", every), float, lambda m: err(f"[items] start_s: {m}", "start_s"))
    for key, bad in (("every_s", every <= 0), ("count", count < 0), ("start_s", start < 0)):
        if bad:
            raise err("[items] every_s must be > 0, count and start_s >= 0", key)
    photos = sorted(q for q in folder.rglob("*") if q.suffix.lower() in SUFFIXES) if folder.is_dir() else []
    if not photos:
        raise err(f"[items] folder {folder}: no photos ({', '.join(sorted(SUFFIXES))})", "folder")
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


KEY = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")


def key_line(lines: list[str], header: int | None, key: str) -> int | None:
    """The line of `key = ...` in the table whose header is on line `header` (1-based; 0 or None:
    the top of the file), up to the next table header; the header's own line if not found."""
    for i in range(header or 0, len(lines)):
        ln = lines[i]
        if ln.lstrip().startswith("["):
            break
        m = KEY.match(ln)
        if m and key in m.groups():
            return i + 1
    return header


def config_key_line(path: Path, dotted: str) -> int | None:
    """The line of a config key ("hardware.interlock_pin") in the scenario's [config.*] tables."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    section, _, key = dotted.partition(".")
    key = re.split(r"[.\[]", key)[0]
    header = next((i + 1 for i, ln in enumerate(lines) if re.fullmatch(rf"\s*\[\s*config\.{re.escape(section)}\s*\]\s*(#.*)?", ln)), None)
    if header is None:
        return next((i + 1 for i, ln in enumerate(lines) if ln.strip().startswith("[config")), None)
    return key_line(lines, header, key or section)


def _line_of(text: str, needle: str) -> int | None:
    for i, ln in enumerate(text.splitlines()):
        if needle in ln:
            return i + 1
    return None
