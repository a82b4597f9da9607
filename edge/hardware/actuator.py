"""What every actuator profile shares: routing results, faults, and safe shutdown."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ecosorter.edge.errors import HardwareError


@dataclass(frozen=True)
class RouteResult:
    compartment: int  # where the item went (may differ from the decision when full)
    ok: bool
    ms: float
    note: str = ""  # "full: rerouted", "fault: ..." etc.


class HardwareFault(HardwareError):
    """Routing stopped; the sorter pauses sorting and reports it."""


class Actuator:
    """Base: status LED, interlock, fill sensors, and close() that always makes things safe.

    Subclasses implement `_move(compartment)` and `_safe()`; they never move while the
    interlock is open and call `_check_budget` between steps of a sequence.
    """

    profile = "base"

    def __init__(self, compartments: int, fallback: int = -1, when_full: str = "fallback",
                 interlock=None, full_sensors: dict[int, object] | None = None, status_led=None,
                 move_budget_s: float = 2.0):
        self.compartments = compartments
        self.fallback = fallback
        self.when_full = when_full
        self.interlock = interlock  # gpiozero Button: pressed = lid closed
        self.full_sensors = full_sensors or {}
        self.status_led = status_led  # gpiozero RGBLED or None
        self.move_budget_s = move_budget_s
        self.fault: str = ""
        self._lock = threading.Lock()
        self._closed = False
        self._devices: list = [d for d in (interlock, status_led, *self.full_sensors.values()) if d is not None]
        self.show("ready")

    # --- status LED: ready green, busy blue, uncertain amber, fault red
    COLORS = {"ready": (0, 1, 0), "busy": (0, 0, 1), "uncertain": (1, 0.5, 0), "fault": (1, 0, 0), "off": (0, 0, 0)}

    def show(self, state: str) -> None:
        if self.status_led is not None and not self._closed:
            self.status_led.color = self.COLORS[state]

    def full(self) -> list[int]:
        return sorted(c for c, s in self.full_sensors.items() if s.is_active)

    def lid_open(self) -> bool:
        return self.interlock is not None and not self.interlock.is_active

    def route(self, compartment: int, uncertain: bool = False) -> RouteResult:
        if self._closed:
            raise HardwareFault("actuator is closed")
        if self.fault:
            return RouteResult(compartment, False, 0.0, f"fault: {self.fault}")
        t0 = time.monotonic()
        note = ""
        if compartment in self.full_sensors and self.full_sensors[compartment].is_active:
            if self.when_full == "pause" or self.fallback < 0 or self.fallback in self.full():
                return self._fail(t0, compartment, f"compartment {compartment} is full; bin paused")
            note = f"compartment {compartment} full: rerouted to {self.fallback}"
            compartment = self.fallback
        with self._lock:
            if self.lid_open():
                return self._fail(t0, compartment, "lid open (interlock): not moving")
            self.show("busy")
            try:
                self._move(compartment, t0)
            except HardwareFault as e:
                self._safe_quietly()
                return self._fail(t0, compartment, str(e))
            self.show("uncertain" if uncertain else "ready")
        return RouteResult(compartment, True, (time.monotonic() - t0) * 1000, note)

    def _fail(self, t0: float, compartment: int, why: str) -> RouteResult:
        self.fault = why
        self.show("fault")
        return RouteResult(compartment, False, (time.monotonic() - t0) * 1000, f"fault: {why}")

    def clear_fault(self) -> None:
        self.fault = ""
        self.show("ready")

    def _check(self, t0: float, step: str) -> None:
        """Between steps: stop at once if the lid opened or the sequence ran over budget."""
        if self.lid_open():
            raise HardwareFault(f"lid opened during {step}: stopped")
        if time.monotonic() - t0 > self.move_budget_s:
            raise HardwareFault(f"{step} exceeded the {self.move_budget_s:g} s move budget")

    def _wait(self, seconds: float, t0: float, step: str) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.02))
            self._check(t0, step)

    def _move(self, compartment: int, t0: float) -> None:
        raise NotImplementedError

    def _safe(self) -> None:
        """Home, trapdoor closed, then detach servos and turn outputs off."""

    def _safe_quietly(self) -> None:
        try:
            self._safe()
        except Exception:  # on a dying process, best effort is all there is
            pass

    def close(self) -> None:
        if self._closed:
            return
        with self._lock:
            self._safe_quietly()
            self._closed = True
            if self.status_led is not None:
                self.status_led.off()
            for d in self._devices:
                d.close()

    def __enter__(self) -> Actuator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullActuator(Actuator):
    """profile = "none": decisions only (a display-only kiosk, benchmarks)."""

    profile = "none"

    def _move(self, compartment: int, t0: float) -> None:
        pass
