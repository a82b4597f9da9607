"""profile = "leds": the person sorts by hand; the item's compartment LED lights, a buzzer beeps.

The LED goes off after `led_on_s` in `tick()`, on the loop's clock, not in a thread of its own:
the simulator's virtual time and the timeline see exactly when.
"""

from __future__ import annotations

from ecosorter.edge.hardware.actuator import Actuator

BEEP_S = 0.08


class LedActuator(Actuator):
    profile = "leds"

    def __init__(self, leds: list, buzzer=None, on_s: float = 3.0, **kw):
        super().__init__(compartments=len(leds), **kw)
        self.leds, self.buzzer, self.on_s = list(leds), buzzer, on_s
        self._devices += [*self.leds, *([buzzer] if buzzer else [])]
        self._led_off_at: float | None = None
        self._beep_off_at: float | None = None
        self.park()

    def _sequence(self, compartment: int) -> None:
        for i, led in enumerate(self.leds):
            if i != compartment:
                led.off()
        self.leds[compartment].on()
        now = self.clock.monotonic()
        self._led_off_at = now + self.on_s
        if self.buzzer is not None:
            self.buzzer.on()
            self._beep_off_at = now + BEEP_S
        self._dropped = True  # the person carries it; the LED is the whole move

    def tick(self) -> None:
        now = self.clock.monotonic()
        if self._beep_off_at is not None and now >= self._beep_off_at:
            self._beep_off_at = None
            self.buzzer.off()
        if self._led_off_at is not None and now >= self._led_off_at:
            self._led_off_at = None
            for led in self.leds:
                led.off()

    def wake_at(self) -> float | None:
        due = [t for t in (self._led_off_at, self._beep_off_at) if t is not None]
        return min(due) if due else None

    def _detach_all(self) -> None:  # "stop every output" for LEDs is: all off
        self._park()

    def _park(self) -> None:
        self._led_off_at = self._beep_off_at = None
        for led in self.leds:
            led.off()
        if self.buzzer is not None:
            self.buzzer.off()
