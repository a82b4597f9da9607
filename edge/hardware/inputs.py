"""Inputs a person or the bin gives: item sensor (break-beam, PIR or ultrasonic), "wrong?"
button, UPS low-power signal.

Sensors wired active-low with the Pi's pull-up (a break-beam that breaks, a button pressed, a
UPS HAT pulling its signal low) read as `is_active`.
"""

from __future__ import annotations

from collections.abc import Callable

from ecosorter.edge.config import HardwareConfig
from ecosorter.edge.errors import ConfigError


class Inputs:
    def __init__(self, cfg: HardwareConfig, pin_factory=None):
        import gpiozero

        self._devices: list = []

        def button(pin: int):
            d = gpiozero.Button(pin, pull_up=True, bounce_time=0.05, pin_factory=pin_factory)
            self._devices.append(d)
            return d

        try:
            self.item_sensor = None
            if cfg.item_sensor_pin >= 0:
                if cfg.item_sensor_kind == "pir":
                    self.item_sensor = gpiozero.MotionSensor(cfg.item_sensor_pin, pin_factory=pin_factory)
                elif cfg.item_sensor_kind == "ultrasonic":
                    if cfg.item_sensor_trigger_pin < 0:
                        raise ConfigError("hardware.item_sensor_trigger_pin", "an ultrasonic sensor needs its trigger pin")
                    self.item_sensor = gpiozero.DistanceSensor(
                        echo=cfg.item_sensor_pin, trigger=cfg.item_sensor_trigger_pin, max_distance=1.0,
                        threshold_distance=cfg.item_sensor_distance_m, pin_factory=pin_factory)
                else:  # break-beam receiver: low (active) while the beam is broken
                    self.item_sensor = button(cfg.item_sensor_pin)
                if not any(d is self.item_sensor for d in self._devices):
                    self._devices.append(self.item_sensor)
            self.wrong_button = button(cfg.wrong_button_pin) if cfg.wrong_button_pin >= 0 else None
            self.power_fail = button(cfg.power_fail_pin) if cfg.power_fail_pin >= 0 else None
        except BaseException:
            self.close()
            raise

    def item_present(self) -> bool:
        # Button and MotionSensor: is_active; DistanceSensor: active when within the threshold
        return bool(self.item_sensor is not None and self.item_sensor.is_active)

    def on_wrong(self, fn: Callable[[], None]) -> None:
        if self.wrong_button is not None:
            self.wrong_button.when_pressed = lambda: fn()

    def on_power_fail(self, fn: Callable[[], None]) -> None:
        if self.power_fail is not None:
            self.power_fail.when_pressed = lambda: fn()

    def close(self) -> None:
        for d in self._devices:
            d.close()
        self._devices.clear()
