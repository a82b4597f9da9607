"""profile = "leds": the person sorts by hand; the item's compartment LED lights, a buzzer beeps."""

from __future__ import annotations

from ecosorter.edge.hardware.actuator import Actuator


class LedActuator(Actuator):
    profile = "leds"

    def __init__(self, leds: list, buzzer=None, on_s: float = 3.0, **kw):
        self.leds, self.buzzer, self.on_s = leds, buzzer, on_s
        super().__init__(compartments=len(leds), **kw)
        self._devices += [*leds, *([buzzer] if buzzer else [])]

    def _move(self, compartment: int, t0: float) -> None:
        for i, led in enumerate(self.leds):
            if i != compartment:
                led.off()
        # One background blink: the loop goes on while the LED stays lit for on_s.
        self.leds[compartment].blink(on_time=self.on_s, off_time=0, n=1, background=True)
        if self.buzzer is not None:
            self.buzzer.beep(on_time=0.08, off_time=0.05, n=1, background=True)

    def _safe(self) -> None:
        for led in self.leds:
            led.off()
        if self.buzzer is not None:
            self.buzzer.off()
