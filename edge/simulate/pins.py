"""gpiozero's MockFactory on a Clock: pin changes stamped with the clock's time, edges timed by it.

This is the pin side of the clock seam: with a VirtualClock the servo and LED timeline is in
virtual seconds; with the system clock it gives absolute timestamps for real-time tests.
"""

from __future__ import annotations

from collections.abc import Callable

from gpiozero.pins.mock import MockFactory, MockPWMPin

from ecosorter.edge.clock import SYSTEM_CLOCK, Clock
from ecosorter.edge.hardware.pulse import pulse_to_angle


class TimelinePin(MockPWMPin):
    """A MockPWMPin that keeps (time, state) of every change and tells the factory's listeners."""

    def __init__(self, factory, info):
        self.timeline: list[tuple[float, float]] = []
        super().__init__(factory, info)

    def _change_state(self, value) -> bool:
        if self._state == value:
            return False
        t = self.factory.clock.monotonic()
        self._state = value
        self.states.append(type(self.states[0])(t - self._last_change, value))
        self._last_change = t
        if self.factory.history:
            self.timeline.append((t, float(value)))
        else:  # a long simulation keeps no per-pin history: the timeline file has it
            del self.states[:-1]
        for fn in self.factory.listeners:
            fn(self, t, float(value))
        return True

    def clear_states(self) -> None:
        super().clear_states()
        self._last_change = self.factory.clock.monotonic()
        self.timeline = [(self._last_change, float(self._state))]


class ClockedMockFactory(MockFactory):
    def __init__(self, clock: Clock = SYSTEM_CLOCK, history: bool = True):
        self.clock, self.history = clock, history
        self.listeners: list[Callable[[TimelinePin, float, float], None]] = []
        super().__init__(pin_class=TimelinePin)

    def pin(self, name, pin_class=None, **kwargs):
        """A pin already made is returned as it is: the simulated MCP3008 makes SPI pins of gpiozero's
        own mock SPI classes first, then gpiozero's software SPI asks for them with this factory's class."""
        for _header, info in self.board_info.find_pin(name):
            if info in self.pins:
                return self.pins[info]
        return super().pin(name, pin_class, **kwargs)

    def ticks(self) -> float:  # gpiozero times edges (bounce, hold) with ticks
        return self.clock.monotonic()

    @staticmethod
    def ticks_diff(later: float, earlier: float) -> float:
        return later - earlier


def servo_angle(value: float, min_pulse_ms: float, max_pulse_ms: float, min_angle: float, max_angle: float,
                period_ms: float = 20.0) -> float | None:
    """The angle a servo is sent by a PWM duty (0 = no pulses: detached, None)."""
    if value <= 0:
        return None
    return pulse_to_angle(value * period_ms, min_angle, max_angle, min_pulse_ms, max_pulse_ms)
