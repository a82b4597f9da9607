"""The simulated bin: servos that take time to travel, a tray, compartments that fill, a lid,
switches, a camera and a person, all on one VirtualClock and driven only through the config's
own pins. What it reports (drops, landings) is physics, never the sorter's opinion.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecosorter.edge.clock import VirtualClock
from ecosorter.edge.config import Config
from ecosorter.edge.errors import SourceError
from ecosorter.edge.preprocess.decode import decode_image
from ecosorter.edge.simulate.pins import ClockedMockFactory, TimelinePin, servo_angle
from ecosorter.edge.sources.base import Frame
from ecosorter.edge.sources.folder import EMPTY_TRAY_RGB

SWITCH_TOLERANCE_DEG = 3.0


def servo_pins(hw) -> dict[str, int]:
    """The servos the simulated bin has, by timeline name: the one list scenarios are checked against."""
    if hw.profile == "chute":
        return {"chute": hw.chute_pin, "trapdoor": hw.trapdoor_pin}
    if hw.profile == "flaps":
        return {f"flap{i}": p for i, p in enumerate(hw.flap_pins)}
    return {}


class ModelPin(TimelinePin):
    """An input whose level is read from the world at the moment code reads it (lid, fill, switches)."""

    reader: Callable[[], bool] | None = None

    def _get_state(self):
        return self.reader() if self.reader is not None else super()._get_state()


class ServoModel:
    """A hobby servo: moves toward its commanded angle at `speed` while it gets pulses; stops where
    it is when detached or jammed."""

    def __init__(self, name: str, speed: float, clock: VirtualClock):
        self.name, self.speed, self.clock = name, speed, clock
        self.t0, self.p0 = 0.0, None  # position at t0 (None: never driven, assume its home is unknown)
        self.target: float | None = None
        self.jammed = False

    def pos(self, t: float | None = None) -> float | None:
        t = self.clock.monotonic() if t is None else t
        if self.p0 is None or self.target is None or self.jammed:
            return self.p0
        step = self.speed * max(0.0, t - self.t0)
        d = self.target - self.p0
        return self.target if abs(d) <= step else self.p0 + (step if d > 0 else -step)

    def command(self, angle: float | None) -> None:
        now = self.clock.monotonic()
        here = self.pos(now)
        self.t0 = now
        if angle is None:  # no pulses: it stops
            self.p0, self.target = here, None
        elif here is None:  # first pulse: a servo jumps to its command from wherever it was
            self.p0, self.target = angle, angle
        else:
            self.p0, self.target = here, angle

    def jam(self, on: bool) -> None:
        now = self.clock.monotonic()
        here = self.pos(now)
        self.jammed = on
        self.p0, self.t0 = here, now


@dataclass
class Item:
    n: int
    image: Path
    placed: float | None = None


class World:
    def __init__(self, cfg: Config, clock: VirtualClock, pins: ClockedMockFactory, record: Callable[[dict], None],
                 speed: float, capacity: int, hand_off_s: float, next_item_gap_s: float, root: Path):
        self.cfg, self.hw, self.clock, self.pins, self.record = cfg, cfg.hardware, clock, pins, record
        self.capacity, self.hand_off_s, self.gap_s, self.root = capacity, hand_off_s, next_item_gap_s, root
        hw = self.hw
        self.lid_open = False
        self.power_failing = False
        self.fill = [0] * (max(hw.compartments.values()) + 1)
        self.tray: Item | None = None
        self.waiting: deque[Item] = deque()
        self.items: list[Item] = []
        self._door_wait_since = float("inf")
        self.drops: list[tuple[float, int, int]] = []  # (t, item n, compartment)
        self._n = itertools.count(1)
        self.servos = {pin: ServoModel(name, speed, clock) for name, pin in servo_pins(hw).items()}
        self.by_name = {s.name: s for s in self.servos.values()}
        self.led_names = {p: f"led{i}" for i, p in enumerate(hw.led_pins)} if hw.profile == "leds" else {}
        if hw.buzzer_pin >= 0 and hw.profile == "leds":
            self.led_names[hw.buzzer_pin] = "buzzer"
        self.led_names.update({p: f"status_{c}" for p, c in zip(hw.status_led_pins, "rgb", strict=False)})
        # inputs whose level is read from this world
        self._model_pin(hw.interlock_pin, lambda: self.lid_open)  # closed lid = switch closed = low
        for c, pin in hw.full_sensor_pins.items():
            self._model_pin(pin, lambda c=int(c): self.fill[c] < self.capacity)
        self._model_pin(hw.power_fail_pin, lambda: not self.power_failing)
        if hw.item_sensor_kind == "beam":  # a break-beam across the tray: low while something is on it
            self._model_pin(hw.item_sensor_pin, lambda: self.tray is None)
        if hw.profile == "chute":
            chute, door = self.by_name["chute"], self.by_name["trapdoor"]
            self._model_pin(hw.chute_home_switch_pin, lambda: not self._near(chute, hw.chute_home_angle))
            self._model_pin(hw.trapdoor_closed_switch_pin, lambda: not self._near(door, hw.trapdoor_closed_angle))
        self.adc = None
        if hw.feedback_adc == "mcp3008" and self.servos:
            from ecosorter.edge.simulate.adc import SimMCP3008

            self.adc = SimMCP3008({ch: (lambda i=i: self._feedback(i)) for i, ch in enumerate(hw.feedback_channels)}, pins)
        pins.listeners.append(self._on_pin)

    # the simulated servos' own potentiometers: the calibration in the config is taken as the truth,
    # else 0.1 at servo_min_angle and 0.9 at servo_max_angle
    def _feedback(self, i: int) -> float:
        hw = self.hw
        servo = list(self.servos.values())[i]
        pos = servo.pos()
        if pos is None:
            return 0.5
        v0, v1 = (hw.feedback_at_min[i], hw.feedback_at_max[i]) if hw.feedback_at_min else (0.1, 0.9)
        return v0 + (pos - hw.servo_min_angle) / (hw.servo_max_angle - hw.servo_min_angle) * (v1 - v0)

    def _model_pin(self, pin: int, level: Callable[[], bool]) -> None:
        if pin >= 0:
            self.pins.pin(pin, pin_class=ModelPin).reader = level

    @staticmethod
    def _near(servo: ServoModel, angle: float) -> bool:
        p = servo.pos()
        return p is not None and abs(p - angle) < SWITCH_TOLERANCE_DEG

    # ------------------------------------------------------------------ what the pins were sent
    def _on_pin(self, pin: TimelinePin, t: float, value: float) -> None:
        number = pin.info.name
        n = int(number[4:]) if isinstance(number, str) and number.startswith("GPIO") else number
        if n in self.servos:
            hw = self.hw
            angle = servo_angle(value, hw.min_pulse_width_ms, hw.max_pulse_width_ms, hw.servo_min_angle,
                                hw.servo_max_angle)
            servo = self.servos[n]
            self.record({"t": t, "kind": "servo", "name": servo.name, "angle": None if angle is None else round(angle, 3)})
            if not servo.jammed:
                servo.command(angle)
            self._watch_drop(servo)
        elif n in self.led_names:
            self.record({"t": t, "kind": "led", "name": self.led_names[n], "value": value})
            name = self.led_names[n]
            if name.startswith("led") and value > 0 and self.tray is not None:
                item = self.tray
                self.clock.call_at(t + self.hand_off_s, lambda: self._land(item, int(name[3:])))

    def _watch_drop(self, servo: ServoModel) -> None:
        """An item falls when its door/flap has opened past half way (checked when it gets there)."""
        hw = self.hw
        if hw.profile == "chute" and servo.name == "trapdoor":
            closed, open_ = hw.trapdoor_closed_angle, hw.trapdoor_open_angle
        elif hw.profile == "flaps" and servo.name.startswith("flap"):
            closed, open_ = hw.flap_closed_angle, hw.flap_open_angle
        else:
            return
        if servo.target is None or abs(servo.target - closed) <= abs(open_ - closed) / 2:
            return
        half = (closed + open_) / 2
        here = servo.pos()
        due = self.clock.monotonic() + (abs(half - here) / servo.speed if here is not None else 0.0)

        def check() -> None:
            if self._open_past_half(servo, closed, open_) and self.tray is not None:
                self._land(self.tray, self._compartment_below(servo))

        self.clock.call_at(due + 1e-6, check)

    @staticmethod
    def _open_past_half(servo: ServoModel, closed: float, open_: float) -> bool:
        p = servo.pos()
        return p is not None and abs(p - closed) >= abs(open_ - closed) / 2 - 1e-6

    def _compartment_below(self, door: ServoModel) -> int:
        if self.hw.profile == "flaps":
            return int(door.name[4:])
        chute = self.by_name["chute"].pos()
        angles = self.hw.chute_angles
        return min(range(len(angles)), key=lambda i: abs(angles[i] - (chute if chute is not None else 1e9)))

    def _land(self, item: Item, compartment: int) -> None:
        if self.tray is not item:  # already gone (taken, or landed)
            return
        self.tray = None
        self.fill[compartment] += 1
        t = self.clock.monotonic()
        self.drops.append((t, item.n, compartment))
        self.record({"t": t, "kind": "drop", "item": item.n, "image": self._rel(item.image), "compartment": compartment})
        if self.fill[compartment] == self.capacity and str(compartment) in self.hw.full_sensor_pins:
            self.record({"t": t, "kind": "input", "name": f"full{compartment}", "value": True})
        if self.waiting:
            self.clock.call_at(t + self.gap_s, self._next_from_hand)

    # ------------------------------------------------------------------ scenario actions
    def place(self, image: Path) -> None:
        item = Item(next(self._n), image)
        self.items.append(item)
        self.waiting.append(item)  # the person holds it until the tray is free
        self._next_from_hand()

    def _tray_free(self) -> bool:
        """Empty, and (with a trapdoor) the door shut: nobody puts an item on an open hole."""
        door = self.by_name.get("trapdoor")
        return self.tray is None and (door is None or door.pos() is None
                                      or self._near(door, self.hw.trapdoor_closed_angle))

    FALL_S = 0.4  # an item put down on an open door is on the tray (seen) this long before it is gone
    PATIENCE_S = 10.0  # how long a person waits for an open door to shut before putting the item down anyway

    def _next_from_hand(self) -> None:
        if not self.waiting:
            return
        now = self.clock.monotonic()
        if self._tray_free() or (self.tray is None and now - self._door_wait_since >= self.PATIENCE_S):
            self._door_wait_since = float("inf")
            self._put(self.waiting.popleft())
        elif self.tray is None:  # the door is still open: look again in a moment
            self._door_wait_since = min(self._door_wait_since, now)
            self.clock.call_at(now + 0.25, self._next_from_hand)

    def _put(self, item: Item) -> None:
        self.tray, item.placed = item, self.clock.monotonic()
        self.record({"t": item.placed, "kind": "place", "item": item.n, "image": self._rel(item.image)})
        door = self.by_name.get("trapdoor")
        if door is not None and self._open_past_half(door, self.hw.trapdoor_closed_angle, self.hw.trapdoor_open_angle):
            # a door left open: it slides off the edge and falls through, in the camera's view for a moment
            self.clock.call_at(item.placed + self.FALL_S, lambda: self._land(item, self._compartment_below(door)))

    def take(self) -> None:
        """A person lifts the item off the tray: it goes nowhere the bin could route it."""
        item, self.tray = self.tray, None
        self.record({"t": self.clock.monotonic(), "kind": "input", "name": "take",
                     "value": None if item is None else item.n})
        if item is not None and self.waiting:
            self.clock.call_at(self.clock.monotonic() + self.gap_s, self._next_from_hand)

    def set_lid(self, state: str) -> None:
        self.lid_open = state == "open"
        self.record({"t": self.clock.monotonic(), "kind": "input", "name": "lid", "value": state})

    def empty(self, compartment: int) -> None:
        if not 0 <= compartment < len(self.fill):
            raise SourceError(f"empty = {compartment}: no such compartment")
        self.fill[compartment] = 0
        self.record({"t": self.clock.monotonic(), "kind": "input", "name": f"full{compartment}", "value": False})

    def set_power(self, state: str) -> None:
        self.power_failing = state == "fail"
        self.record({"t": self.clock.monotonic(), "kind": "input", "name": "power", "value": state})

    def jam(self, name: str, on: bool) -> None:
        if name not in self.by_name:
            raise SourceError(f"{'jam' if on else 'unjam'} = {name!r}: this bin ({self.hw.profile}) has servos "
                              f"{', '.join(self.by_name) or 'none'}")
        self.by_name[name].jam(on)
        self.record({"t": self.clock.monotonic(), "kind": "input", "name": f"jam_{name}", "value": on})

    def _rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)


class SimCamera:
    """The camera above the tray: frames at `fps` of virtual time, the item's photo or the empty
    tray. Identical frames are skipped over when nothing is due, so idle hours cost little."""

    live = False
    name = "simulated camera"

    def __init__(self, world: World, clock: VirtualClock, fps: float, end: float, settle_frames: int):
        self.world, self.clock, self.period, self.end = world, clock, 1.0 / fps, end
        self.settle_frames = settle_frames
        self.state = "ok"  # ok | unplugged | frozen | dark
        self.wake: Callable[[], float | None] = lambda: None
        # Work the bin does on its own threads (the event-log check): real computation, which takes no
        # virtual time, so virtual time waits for it; else when its answer is read depends on the machine
        self.background: Callable[[], None] = lambda: None
        self._seq = 0
        self._same = 0
        self._last_key: tuple | None = None
        self._frozen: np.ndarray | None = None
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._shape = (384, 512, 3)
        self._empty: np.ndarray | None = None
        self._placed: Item | None = None
        self._shifted: np.ndarray | None = None

    def open(self) -> None:
        pass

    def set_state(self, state: str) -> None:
        self.state = {"replug": "ok", "unplug": "unplugged", "freeze": "frozen"}.get(state, state)
        self._frozen = None
        self.world.record({"t": self.clock.monotonic(), "kind": "input", "name": "camera", "value": self.state})

    def read(self) -> Frame | None:
        clock, world = self.clock, self.world
        self.background()
        key = (world.tray.n if world.tray else 0, self.state)
        self._same = self._same + 1 if key == self._last_key else 0
        self._last_key = key
        step = self.period
        if self._same >= self.settle_frames:  # nothing changes until the next scheduled thing
            now = clock.monotonic()
            due = [t for t in (clock.next_due(), self.wake()) if t is not None and t > now]
            due.append(self.end if now < self.end else self.end + 3600)
            step = max(self.period, min(due) - now)
        clock.advance_to(clock.monotonic() + step)
        if clock.monotonic() >= self.end and world.tray is None and not world.waiting:
            return None
        if clock.monotonic() >= self.end + 3600:  # an item stuck on the tray does not run forever
            return None
        if self.state == "unplugged":
            raise SourceError("camera unplugged (simulated)")
        pixels = self._pixels()
        if self.state == "frozen":
            self._frozen = pixels if self._frozen is None else self._frozen
            pixels = self._frozen
        elif self.state == "dark":
            pixels = (pixels // 12).astype(np.uint8)
        self._seq += 1
        name = f"item{world.tray.n}:{world._rel(world.tray.image)}" if world.tray else ""
        return Frame(pixels, "rgb", clock.monotonic(), self._seq, name)

    def _pixels(self) -> np.ndarray:
        item = self.world.tray
        if item is None:
            if self._empty is None or self._empty.shape != self._shape:
                self._empty = np.empty(self._shape, np.uint8)
                self._empty[:] = EMPTY_TRAY_RGB
            return self._empty
        pixels = self._cache.get(item.image)
        if pixels is None:
            pixels = decode_image(item.image)
            self._cache[item.image] = pixels
            if len(self._cache) > 64:
                self._cache.popitem(last=False)
        self._cache.move_to_end(item.image)
        self._shape = pixels.shape
        if self._placed is not item:  # nobody puts an item down twice in the same spot
            dy, dx = (item.n * 7) % 13 - 6, (item.n * 11) % 17 - 8
            self._placed, self._shifted = item, np.roll(pixels, (dy, dx), axis=(0, 1))
        return self._shifted

    def close(self) -> None:
        self._cache.clear()
