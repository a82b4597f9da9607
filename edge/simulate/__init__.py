"""`ecosorter simulate`: the real sorter against a simulated bin in virtual time.

Config validation, trigger, model, decision, actuator, machine, event log and status board are
the real ones; only the clock (VirtualClock), the pins (gpiozero's MockFactory on that clock)
and the world behind them (servos that travel, a tray, compartments, a lid, a person) are
simulated. The timeline records what the pins were sent and what physically happened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ecosorter.edge.clock import VirtualClock
from ecosorter.edge.config import config_from_dict
from ecosorter.edge.errors import ConfigError, ConfigErrors, EcoSorterError
from ecosorter.edge.machine import Entry
from ecosorter.edge.record.event import Event
from ecosorter.edge.simulate.pins import ClockedMockFactory
from ecosorter.edge.simulate.scenario import Scenario, ScenarioError, SimEvent, config_key_line, load_scenario
from ecosorter.edge.simulate.world import SimCamera, World, servo_pins

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("ecosorter.simulate")

__all__ = ["SimResult", "ScenarioError", "load_scenario", "run_scenario"]


@dataclass
class SimResult:
    timeline: list[dict]
    summary: dict

    def of(self, kind: str, **match) -> list[dict]:
        return [r for r in self.timeline if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def sim_config(scenario: Scenario, config_path: Path | None, state_dir: Path):
    data: dict = {}
    if config_path is not None:
        try:
            data = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise EcoSorterError(f"config {config_path}: {e}") from None
    data = _merge(data, scenario.config)
    # the simulated bin owns the camera, the pins and the clock; it never talks to a broker
    data = _merge(data, {"record": {"state_dir": str(state_dir)}, "mqtt": {"enabled": False},
                         "status": {"enabled": False}, "hardware": {"pin_factory": "mock"}})
    try:
        return config_from_dict(data)
    except ConfigError as e:  # name the scenario and the line when the scenario's [config.*] set the key
        errors = e.errors if isinstance(e, ConfigErrors) else [e]
        lines = []
        for err in errors:
            where = _from_scenario(scenario, err.key)
            lines.append(f"scenario {scenario.path}:{where}: [config] {err}" if where else
                         f"{err} (from {config_path or 'the defaults'} with scenario {scenario.path})")
        raise ScenarioError("\n".join(lines)) from None


def _from_scenario(scenario: Scenario, key: str) -> int | None:
    """The scenario's line for a config key it sets itself (None: it came from --config or a default)."""
    node: object = scenario.config
    for part in key.split(".")[:2]:
        part = part.split("[")[0]
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return config_key_line(scenario.path, key) or None


class Recorder:
    """The timeline as it happens: streamed to its file (one JSON line per record, in time order, as
    virtual time only goes forward) and kept in memory only when asked (tests read it back). A week
    in memory grew the process ~8 MB per simulated day; the summary's counts are kept as it goes."""

    def __init__(self, path: Path | None = None, keep: bool = True):
        self.kept: list[dict] = []
        self.keep = keep
        self._file = open(path, "w", encoding="utf-8") if path is not None else None  # noqa: SIM115
        self.raised: Counter = Counter()
        self.recorded: set[int] = set()
        self.last_t = 0.0

    def __call__(self, r: dict) -> None:
        if r["t"] < self.last_t - 1e-9:  # cannot happen on a VirtualClock; a file out of order is a bug
            raise RuntimeError(f"timeline record before its predecessor ({self.last_t}): {r}")
        self.last_t = max(self.last_t, r["t"])
        if r["kind"] in ("hold", "fault", "warning") and r["state"] == "raised":
            self.raised[(r["kind"], r["name"].rstrip("0123456789"))] += 1
        elif r["kind"] == "item" and r["item"] is not None:
            self.recorded.add(r["item"])
        if self._file is not None:
            self._file.write(json.dumps({**r, "t": round(r["t"], 6)}, separators=(",", ":")) + "\n")
        if self.keep:
            self.kept.append(r)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _VirtualTime(logging.Filter):
    """Stamps log records with the virtual clock's time: a log line says when it happened in the
    simulated day, not when the computer got there."""

    def __init__(self, clock: VirtualClock):
        super().__init__()
        self.clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        record.created = self.clock.time()
        record.msecs = (record.created % 1) * 1000
        return True


@contextlib.contextmanager
def virtual_log_time(clock: VirtualClock) -> Iterator[None]:
    stamp = _VirtualTime(clock)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(stamp)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(stamp)


def run_scenario(scenario: Scenario | str | Path, config_path: Path | None = None,
                 state_dir: Path | None = None, timeline_path: Path | None = None, keep: bool = True) -> SimResult:
    """keep = False: the timeline only goes to `timeline_path` (a long run in bounded memory)."""
    from ecosorter.edge.sorter import build_sorter

    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    tmp = None
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ecosorter-simulate-")
        state_dir = Path(tmp.name)
    try:
        cfg = sim_config(sc, config_path, state_dir)
        recorder = Recorder(timeline_path, keep)
        try:
            return _run(sc, cfg, state_dir, build_sorter, recorder)
        finally:
            recorder.close()
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(sc: Scenario, cfg, state_dir: Path, build_sorter, record: Recorder) -> SimResult:
    wall0 = time.perf_counter()
    clock = VirtualClock()
    pins = ClockedMockFactory(clock, history=record.keep)
    hw = cfg.hardware
    world = World(cfg, clock, pins, record, speed=hw.servo_speed_deg_s if sc.bin.servo_speed_deg_s is None else sc.bin.servo_speed_deg_s,
                  capacity=sc.bin.compartment_capacity, hand_off_s=sc.bin.hand_off_s,
                  next_item_gap_s=sc.bin.next_item_gap_s, root=sc.path.parent.resolve())
    t = cfg.trigger
    fps = cfg.camera.fps if sc.bin.fps is None else sc.bin.fps
    camera = SimCamera(world, clock, fps, sc.end,
                       settle_frames=t.empty_learn_frames + t.still_frames + cfg.decision.frames + 3)
    _check_pins(sc, cfg)
    stop = threading.Event()
    with virtual_log_time(clock), \
            build_sorter(cfg, pin_factory=pins, state_dir=state_dir, clock=clock, source=camera) as sorter:
        camera.wake = sorter.wake_at
        if sorter.record_guard is not None:
            camera.background = sorter.record_guard.check.wait

        def on_machine(entry: Entry, state: str, who: str) -> None:
            record({"t": clock.monotonic(), "kind": entry.condition.kind, "name": entry.key, "state": state,
                    **({"who": who} if who else {}), **({"detail": entry.detail} if entry.detail else {})})

        sorter.machine.subscribe(on_machine, first=True)
        # The bin parks its servos before it is up, and its camera learns the empty tray first:
        # what a scenario does before then happens as soon as the bin can see it.
        up = clock.monotonic() + (t.empty_learn_frames + 1) / fps
        for ev in sc.events:
            clock.call_at(max(ev.at, up), lambda ev=ev: _apply(ev, world, camera, pins, cfg, stop, sc))

        def on_event(e: Event) -> None:
            n, _, image = e.source_name.partition(":")
            item = world.items[int(n[4:]) - 1] if n.startswith("item") else None
            record({"t": clock.monotonic(), "kind": "item", "item": item.n if item else None, "image": image,
                    "placed": item.placed if item else None, "label": e.label, "compartment": e.compartment,
                    "routed_to": e.routed_to if e.routed_ok else None, "why": e.note})

        summary = sorter.run(stop, on_event=on_event)
    record({"t": clock.monotonic(), "kind": "exit", "code": 0})
    raised = record.raised
    placed = [i for i in world.items if i.placed is not None]
    result = {
        "virtual_s": round(clock.monotonic(), 3), "wall_s": round(time.perf_counter() - wall0, 3),
        "items": {"dropped_by_person": len(world.items), "placed": len(placed),
                  # put on the tray but never recorded by the sorter: a bin that did not see an item
                  "never_recorded": len({i.n for i in placed} - record.recorded),
                  "decided": summary.items,
                  "routed": sum(summary.routed.values()), "not_routed": summary.unrouted, "held": summary.held,
                  "rerouted": summary.rerouted},
        "compartments": {"routed": {str(c): n for c, n in sorted(summary.routed.items())},
                         "landed": {str(c): n for c, n in sorted(Counter(c for _, _, c in world.drops).items())},
                         # keys above are config numbers (0..n-1); these are as printed on the bin
                         "names": list(cfg.hardware.compartment_names)},
        "holds": {name: n for (kind, name), n in sorted(raised.items()) if kind == "hold"},
        "faults": {name: n for (kind, name), n in sorted(raised.items()) if kind == "fault"},
        "warnings": {name: n for (kind, name), n in sorted(raised.items()) if kind == "warning"},
        "exit": 0,
    }
    return SimResult(record.kept, result)


def _check_pins(sc: Scenario, cfg) -> None:
    """Events that need a pin the config does not have are scenario errors, named by line."""
    hw = cfg.hardware
    need = {"lid": ("interlock_pin", hw.interlock_pin), "press": ("wrong_button_pin", hw.wrong_button_pin),
            "power": ("power_fail_pin", hw.power_fail_pin)}
    for ev in sc.events:
        if ev.kind in need and need[ev.kind][1] < 0:
            raise ScenarioError(f"scenario {sc.path}:{ev.line}: {ev.kind} needs hardware.{need[ev.kind][0]} "
                                "in the config (or in the scenario's [config.hardware])")
        if ev.kind == "empty" and not 0 <= ev.value <= max(hw.compartments.values()):
            raise ScenarioError(f"scenario {sc.path}:{ev.line}: empty = {ev.value}: no such compartment")
        if ev.kind in ("jam", "unjam"):
            names = list(servo_pins(hw))
            if ev.value not in names:
                raise ScenarioError(f"scenario {sc.path}:{ev.line}: {ev.kind} = {ev.value!r}: this bin "
                                    f"(profile {hw.profile!r}) has servos: {', '.join(names) or 'none'}")


def _apply(ev: SimEvent, world: World, camera: SimCamera, pins: ClockedMockFactory, cfg, stop: threading.Event,
           sc: Scenario) -> None:
    clock = world.clock
    if ev.kind == "drop":
        world.place(ev.value)
    elif ev.kind == "lid":
        world.set_lid(ev.value)
    elif ev.kind == "empty":
        world.empty(ev.value)
    elif ev.kind == "camera":
        camera.set_state(ev.value)
    elif ev.kind in ("jam", "unjam"):
        world.jam(ev.value, ev.kind == "jam")
    elif ev.kind == "power":
        world.set_power(ev.value)
    elif ev.kind == "press":
        button = pins.pin(cfg.hardware.wrong_button_pin)
        hold = ev.hold_s if ev.hold_s is not None else (0.3 if ev.value == "wrong" else cfg.hardware.clear_hold_s + 0.5)
        world.record({"t": clock.monotonic(), "kind": "input", "name": "button", "value": ev.value, "hold_s": hold})
        button.drive_low()
        clock.call_at(clock.monotonic() + hold, button.drive_high)
    elif ev.kind == "take":
        world.take()
    elif ev.kind == "log":
        world.record({"t": clock.monotonic(), "kind": "input", "name": "log", "value": ev.value})
        db = Path(cfg.record.state_dir) / "events.db"
        junk = db.with_name("events.db.junk")
        junk.write_bytes(b"not a database\n" * 300)
        junk.replace(db)
    elif ev.kind == "signal":
        world.record({"t": clock.monotonic(), "kind": "input", "name": "signal", "value": ev.value})
        stop.set()  # as the CLI's handler does: finish the current step, then stop safely


def write_timeline(result: SimResult, path: Path) -> None:
    """A kept timeline to a file (run_scenario(timeline_path=...) streams it instead)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in result.timeline:
            f.write(json.dumps({**r, "t": round(r["t"], 6)}, separators=(",", ":")) + "\n")
