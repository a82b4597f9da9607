"""What every actuator profile shares: motion in time, routing results, and the safe sequence.

Servos are open-loop: the bin only knows where it sent each one and when it should have
arrived (|delta angle| / servo_speed_deg_s + settle). Every dependent step waits for that; the
lid (interlock) is read between slices of every wait, and if it opens the servos are detached
at once and nothing moves again until the machine says so. Optional position switches turn
"should have arrived" into "has arrived": a switch that does not confirm is a jam fault.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from ecosorter.edge.clock import SYSTEM_CLOCK, Clock
from ecosorter.edge.errors import HardwareError
from ecosorter.edge.machine import Machine

log = logging.getLogger("ecosorter.hardware")

WAIT_SLICE_S = 0.02  # how often the lid is read while a servo travels


@dataclass(frozen=True)
class RouteResult:
    compartment: int  # where the item was sent
    ok: bool  # the item reached it (dropped / lit): recorded as routed even if a later step failed
    ms: float
    note: str = ""  # why it stopped, or what happened after the drop
    stopped: str = ""  # the hold or fault that stopped the sequence ("lid", "jam", ...), "" if none


class HardwareFault(HardwareError):
    """A latched fault raised by a sequence: `name` is a machine fault name."""

    def __init__(self, name: str, detail: str):
        super().__init__(detail)
        self.name, self.detail = name, detail


class LidOpened(HardwareError):
    """The interlock opened during a sequence: everything was detached where it stood."""


class Axis:
    """One servo and what the bin knows of it: where it was sent and how long travel takes."""

    def __init__(self, name: str, servo, speed_deg_s: float, settle_s: float, span: tuple[float, float],
                 switch=None, switch_angle: float | None = None, feedback=None,
                 feedback_map: tuple[float, float] | None = None, tolerance_deg: float = 6.0):
        self.name, self.servo = name, servo
        self.speed, self.settle_s, self.span = speed_deg_s, settle_s, span
        self.switch, self.switch_angle = switch, switch_angle  # switch closed (active) = at switch_angle
        self.angle: float | None = None  # None: unknown (power-up, or stopped mid-travel)
        # position feedback: an ADC input (gpiozero MCP3008: .value 0-1) on the servo's potentiometer,
        # and its readings at span[0] and span[1] (from `ecosorter calibrate`; None: not calibrated)
        self.feedback, self.feedback_map, self.tolerance_deg = feedback, feedback_map, tolerance_deg

    def position(self) -> float | None:
        """Where the servo really is, read from its feedback (None: no calibrated feedback)."""
        if self.feedback is None or self.feedback_map is None:
            return None
        (lo, hi), (v0, v1) = self.span, self.feedback_map
        return lo + (float(self.feedback.value) - v0) / (v1 - v0) * (hi - lo)

    def arrived(self, target: float) -> bool:
        where = self.position()
        return where is None or abs(where - target) <= self.tolerance_deg

    def past(self, start: float, target: float) -> bool:
        """Read at least half way from start to target (no calibrated feedback: assumed)."""
        where = self.position()
        return where is None or abs(where - start) >= abs(target - start) / 2

    def travel_s(self, target: float) -> float:
        delta = abs(target - self.angle) if self.angle is not None else self.span[1] - self.span[0]
        return delta / self.speed

    def send(self, target: float) -> float:
        """Command the angle; returns the seconds until it has arrived and settled."""
        seconds = self.travel_s(target) + self.settle_s
        try:
            self.servo.angle = target
        except Exception as e:  # a pin or driver error is a fault, not a crash of the loop
            self.angle = None
            raise HardwareFault("servo", f"{self.name} -> {target:g} deg: {type(e).__name__}: {e}") from e
        self.angle = target
        return seconds

    def detach(self) -> None:
        self.servo.detach()

    def lost(self) -> None:
        """Stopped mid-travel: where it is now is unknown."""
        self.angle = None

    def at(self, angle: float) -> bool:
        """Is it at `angle`: by its switch when the switch marks that angle, else by what it was sent."""
        if self.switch is not None and self.switch_angle is not None and abs(angle - self.switch_angle) < 1e-6:
            return bool(self.switch.is_active)
        return self.angle == angle

    def confirm_left(self, step: str) -> None:
        """Half way from the switch's position: its switch must have opened (no switch: travel time is all)."""
        if self.switch is None or self.switch_angle is None or not self.switch.is_active:
            return
        self.angle = None
        raise HardwareFault("jam", f"{self.name} did not leave {self.switch_angle:g} deg during {step} "
                                   "(position switch still closed)")

    def confirm(self, target: float) -> None:
        """With a switch: at switch_angle it must be closed; anywhere else it must be open."""
        if self.switch is None or self.switch_angle is None:
            return
        closed = bool(self.switch.is_active)
        at_switch = abs(target - self.switch_angle) < 1e-6
        if closed != at_switch:
            self.angle = None
            where = "did not reach" if at_switch else "did not leave"
            raise HardwareFault("jam", f"{self.name} {where} {self.switch_angle:g} deg (position switch)")


class Actuator:
    """Base: status LED, interlock, fill sensors, timed steps, and close() that is always safe.

    Subclasses implement `_sequence(compartment)` (calling `_step` and setting `self._dropped`)
    and `_park()` (the safe positions, in a safe order); both run with the lid closed only.
    """

    profile = "base"
    clears_tray = False  # a routed item has left the tray (a door or flap dropped it), not carried later
    COLORS = {"ready": (0, 1, 0), "busy": (0, 0, 1), "uncertain": (1, 0.5, 0), "held": (0.6, 0, 1),
              "fault": (1, 0, 0), "off": (0, 0, 0)}

    def __init__(self, compartments: int, machine: Machine | None = None, clock: Clock = SYSTEM_CLOCK,
                 interlock=None, full_sensors: dict[int, object] | None = None, status_led=None,
                 move_budget_s: float = 2.0):
        if compartments < 1:
            raise ValueError(f"compartments must be >= 1, not {compartments}")
        self.compartments = compartments
        self.clock = clock
        self.machine = machine if machine is not None else Machine(clock)
        self.interlock = interlock  # gpiozero Button: pressed = lid closed
        self.full_sensors = full_sensors or {}
        self.status_led = status_led  # gpiozero RGBLED or None
        self.move_budget_s = move_budget_s
        self.axes: list[Axis] = []
        self._dropped = False
        self._lock = threading.RLock()
        self.closed = False
        self._devices: list = [d for d in (interlock, status_led, *self.full_sensors.values()) if d is not None]
        self.show("ready")

    def _check_open(self) -> None:
        if self.closed:
            raise HardwareError(f"{self.profile} actuator is closed")

    # --- inputs the machine reads every tick
    def full(self) -> set[int]:
        return {c for c, s in self.full_sensors.items() if s.is_active}

    def lid_open(self) -> bool:
        return self.interlock is not None and not self.interlock.is_active

    def show(self, state: str) -> None:
        if self.status_led is not None and not self.closed:
            self.status_led.color = self.COLORS[state]

    def tick(self) -> None:
        """Called every loop pass: timed outputs (LEDs) end here, never in a thread of their own."""

    def wake_at(self) -> float | None:
        """The next instant tick() has work to do (None: nothing pending)."""
        return None

    def parked(self) -> bool:
        """Every servo known to be at its safe position. False after the lid opened mid-move or
        mid-drop, or a jam: the bin parks before anything else is put on the tray."""
        return True

    def open_below(self) -> tuple[bool, int | None]:
        """(is the tray's floor open, the compartment an item falling now lands in, None: unknown).
        An item that vanishes from an open tray fell through: it is recorded with where it went."""
        return False, None

    # --- routing
    def route(self, compartment: int, uncertain: bool = False) -> RouteResult:
        """One item into `compartment`. The caller asked the machine first; faults and lid holds
        found on the way are raised on the machine, and the result says whether the item dropped."""
        self._check_open()
        if not 0 <= compartment < self.compartments:
            raise HardwareError(f"compartment {compartment} does not exist (0..{self.compartments - 1})")
        t0 = self.clock.monotonic()
        with self._lock:
            self._dropped = False
            self.show("busy")
            stopped, note = self._guarded(lambda: self._sequence(compartment))
            self.show(("uncertain" if uncertain else "ready") if not stopped else
                      ("held" if stopped == "lid" else "fault"))
        return RouteResult(compartment, self._dropped, (self.clock.monotonic() - t0) * 1000, note, stopped)

    def park(self) -> bool:
        """The safe sequence: with the lid closed, safe positions in a safe order, each waited
        for, then detach; with the lid open or a fault latched, detach only (nothing moves: a
        jammed mechanism is not driven again until a person says it is free). True if parked."""
        if self.closed:
            return False
        with self._lock:
            if self.machine.faulted:
                self._detach_all()
                return False
            return not self._guarded(self._park)[0]

    def _guarded(self, steps) -> tuple[str, str]:
        """Run a sequence with the lid closed; what stopped it ("lid" or a fault name) and why, or ("", "").
        A fault found on the way detaches everything and is raised on the machine."""
        try:
            self._guard_lid()
            steps()
        except LidOpened as e:
            return "lid", str(e)
        except HardwareFault as e:
            self._detach_all()
            self.machine.raise_(e.name, e.detail)
            return e.name, str(e)
        return "", ""

    def move_to(self, axis: Axis, angle: float) -> None:
        """One servo to an angle and wait for it (calibration): lid, switches and budget as ever."""
        self._check_open()
        with self._lock:
            self._step(axis, angle, f"{axis.name} to {angle:g}")

    def _guard_lid(self) -> None:
        if self.lid_open():
            self._detach_all()
            self.machine.raise_("lid")
            raise LidOpened("lid open (interlock): not moving")

    def _step(self, axis: Axis, target: float, step: str, drops: bool = False) -> None:
        """Send one servo and wait until it has arrived; lid, budget and switch checked. With
        `drops`, the item counts as dropped once the door or flap is half way open: it has fallen
        then, even if the lid stops everything a moment later."""
        self._guard_lid()
        t0 = self.clock.monotonic()
        half = axis.travel_s(target) / 2
        start = axis.angle
        from_switch = axis.switch_angle is not None and start == axis.switch_angle
        seconds = axis.send(target)
        if drops:
            self._wait(half, step, moving=axis)
            if from_switch:
                axis.confirm_left(step)  # a door jammed shut has dropped nothing: the item is still on it
            if start is not None:  # with feedback: dropped once the door is *read* half open, not timed so
                self._until(axis, lambda: axis.past(start, target), t0, step, f"half way to {target:g} deg")
            self._dropped = True
            seconds -= half
        self._wait(seconds, step, moving=axis)
        # With feedback, "should have arrived" becomes "has arrived": a slow servo is waited for
        # (within the move budget); one that does not get there is a jam, before the next step.
        self._until(axis, lambda: axis.arrived(target), t0, step, f"{target:g} deg")
        took = self.clock.monotonic() - t0
        if took > self.move_budget_s:
            raise HardwareFault("budget", f"{step} took {took:.2f} s, over the {self.move_budget_s:g} s move budget")
        axis.confirm(target)

    def _until(self, axis: Axis, reached, t0: float, step: str, what: str) -> None:
        """Wait (lid watched) until `reached()`, at most until the move budget since t0 is spent:
        then the servo is not where it must be, a jam. Without feedback `reached()` is at once true."""
        while not reached():
            if self.clock.monotonic() - t0 >= self.move_budget_s:
                where = axis.position()
                axis.lost()
                raise HardwareFault("jam", f"{axis.name} read at {where:.0f} deg, not {what}, after "
                                           f"{self.move_budget_s:g} s of {step} (position feedback)")
            self._wait(WAIT_SLICE_S, step, moving=axis)

    def _wait(self, seconds: float, step: str, moving: Axis | None = None) -> None:
        end = self.clock.monotonic() + seconds
        while (left := end - self.clock.monotonic()) > 1e-9:
            self.clock.sleep(min(left, WAIT_SLICE_S))
            if self.lid_open():
                if moving is not None:
                    moving.lost()
                self._detach_all()
                self.machine.raise_("lid", f"during {step}")
                raise LidOpened(f"lid opened during {step}: everything stopped where it was")

    def _detach_all(self) -> None:
        for axis in self.axes:
            try:
                axis.detach()
            except Exception:  # keep detaching the others
                log.exception("detaching %s", axis.name)

    def _sequence(self, compartment: int) -> None:
        raise NotImplementedError

    def _park(self) -> None:
        self._detach_all()

    def close(self, park: bool = True) -> None:
        """Safe first (guarded), then outputs off, then release every device. park=False: the caller
        has just parked (the loop does, before its last look at the tray): detach only."""
        if self.closed:
            return
        with self._lock:
            try:
                if park:
                    self.park()
            except Exception:  # on a dying process, best effort is all there is
                log.exception("while parking")
            self._detach_all()
            self.closed = True
            if self.status_led is not None:
                try:
                    self.status_led.off()
                except Exception:
                    log.exception("status LED off")
            for d in self._devices:
                try:
                    d.close()
                except Exception:
                    log.exception("closing %r", d)

    def __enter__(self) -> Actuator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullActuator(Actuator):
    """profile = "none": decisions only (a display-only kiosk, benchmarks)."""

    profile = "none"

    def _sequence(self, compartment: int) -> None:
        self._dropped = True
