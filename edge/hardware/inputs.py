"""Inputs a person or the bin gives: item sensor (break-beam, PIR or ultrasonic), the
"wrong?" / clear button, UPS low-power signal.

Sensors wired active-low with the Pi's pull-up (a break-beam that breaks, a button pressed, a
UPS HAT pulling its signal low) read as `is_active`.

The button has two meanings, told apart by how long it is held: a short press says "wrong?"
(or resumes after the lid, with interlock_resume = "button"); held `clear_hold_s` it clears
latched faults. Edges are only noted in the pin callback; the loop acts on them in `presses()`,
on its own thread and clock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from ecosorter.edge.clock import SYSTEM_CLOCK, Clock
from ecosorter.edge.config import HardwareConfig
from ecosorter.edge.errors import HardwareError

log = logging.getLogger("ecosorter.hardware")


class Inputs:
    def __init__(self, cfg: HardwareConfig, pin_factory=None, clock: Clock = SYSTEM_CLOCK):
        import gpiozero

        self._devices: list = []
        self.clock, self.clear_hold_s = clock, cfg.clear_hold_s
        self.item_distance_m = cfg.item_sensor_distance_m
        self._lock = threading.Lock()
        self._pressed_at: float | None = None
        self._long_sent = False
        self._presses: deque[str] = deque(maxlen=16)
        self._no_echo_logged = False

        def button(pin: int):
            d = gpiozero.Button(pin, pull_up=True, bounce_time=0.05, pin_factory=pin_factory)
            self._devices.append(d)
            return d

        try:
            self.item_sensor = None
            self.kind = cfg.item_sensor_kind
            if cfg.item_sensor_pin >= 0:
                if cfg.item_sensor_kind == "pir":
                    self.item_sensor = gpiozero.MotionSensor(cfg.item_sensor_pin, pin_factory=pin_factory)
                elif cfg.item_sensor_kind == "ultrasonic":
                    # partial: a sensor that never echoes must not block the loop waiting for a full queue
                    self.item_sensor = gpiozero.DistanceSensor(
                        echo=cfg.item_sensor_pin, trigger=cfg.item_sensor_trigger_pin, partial=True,
                        max_distance=max(1.0, 2 * cfg.item_sensor_distance_m),
                        threshold_distance=cfg.item_sensor_distance_m, pin_factory=pin_factory)
                else:  # break-beam receiver: low (active) while the beam is broken
                    self.item_sensor = button(cfg.item_sensor_pin)
                if not any(d is self.item_sensor for d in self._devices):
                    self._devices.append(self.item_sensor)
            self.wrong_button = button(cfg.wrong_button_pin) if cfg.wrong_button_pin >= 0 else None
            self.power_fail = button(cfg.power_fail_pin) if cfg.power_fail_pin >= 0 else None
            if self.wrong_button is not None:
                self.wrong_button.when_pressed = self._down
                self.wrong_button.when_released = self._up
        except Exception as e:
            self.close()
            if isinstance(e, HardwareError):
                raise
            raise HardwareError(f"hardware inputs (item sensor {cfg.item_sensor_kind} on GPIO{cfg.item_sensor_pin}, "
                                f"button, UPS pin): {type(e).__name__}: {e}") from e
        except BaseException:
            self.close()
            raise

    def item_present(self) -> bool:
        if self.item_sensor is None:
            return False
        if self.kind == "ultrasonic":
            # gpiozero's DistanceSensor.is_active means "out of range": an item is what is near.
            # No echo yet (unplugged, or just started) reads 0 m in gpiozero: that is "nothing".
            if not self.item_sensor._queue.queue:
                if not self._no_echo_logged:
                    log.warning("ultrasonic item sensor (hardware.item_sensor_pin): no echo; check its wiring")
                    self._no_echo_logged = True
                return False
            return float(self.item_sensor.distance) < self.item_distance_m
        return bool(self.item_sensor.is_active)

    def power_failing(self) -> bool:
        return bool(self.power_fail is not None and self.power_fail.is_active)

    # --- the button: edges noted here, meaning decided by presses() on the loop
    def _down(self) -> None:
        with self._lock:
            self._pressed_at, self._long_sent = self.clock.monotonic(), False

    def _up(self) -> None:
        with self._lock:
            if self._pressed_at is not None and not self._long_sent:
                self._presses.append("short")
            self._pressed_at = None

    def presses(self) -> list[str]:
        """"short" for each completed short press, "long" once a press has lasted clear_hold_s."""
        with self._lock:
            if (self._pressed_at is not None and not self._long_sent
                    and self._pressed_at + self.clear_hold_s <= self.clock.monotonic()):  # wake_at's own sum
                self._long_sent = True
                self._presses.append("long")
            out = list(self._presses)
            self._presses.clear()
        return out

    def wake_at(self) -> float | None:
        with self._lock:
            if self._pressed_at is not None and not self._long_sent:
                return self._pressed_at + self.clear_hold_s
        return None

    def close(self) -> None:
        import gpiozero

        for d in self._devices:
            # gpiozero's DistanceSensor.close() drops its trigger before it stops its sampling thread, which
            # then fires the trigger it no longer has (an AttributeError in that thread): stop the thread first
            queue = getattr(d, "_queue", None) if isinstance(d, gpiozero.DistanceSensor) else None
            if queue is not None:
                try:
                    queue.stop()
                except RuntimeError:  # never started: nothing to stop
                    pass
            d.close()
        self._devices.clear()
