"""Servos on a PCA9685 I2C board (adafruit-circuitpython-servokit): hardware-timed pulses, no jitter.

Wraps a ServoKit channel in the small servo interface the chute sequence uses.
"""

from __future__ import annotations

from ecosorter.edge.errors import HardwareError


class KitServo:
    """`.angle` in the same -90..90 convention as gpiozero's AngularServo; `.detach()` stops pulses."""

    def __init__(self, kit_servo, min_pulse_us: int, max_pulse_us: int):
        self._s = kit_servo
        self._s.set_pulse_width_range(min_pulse_us, max_pulse_us)
        self._s.actuation_range = 180

    @property
    def angle(self) -> float | None:
        a = self._s.angle
        return None if a is None else a - 90.0

    @angle.setter
    def angle(self, value: float) -> None:
        self._s.angle = max(0.0, min(180.0, value + 90.0))

    def detach(self) -> None:
        self._s.angle = None  # ServoKit: None turns the channel's pulses off

    def close(self) -> None:
        self.detach()


def open_kit(address: int):
    try:
        from adafruit_servokit import ServoKit
    except ImportError as e:
        raise HardwareError("hardware.profile = 'pca9685' needs adafruit-circuitpython-servokit "
                            f"(pip install adafruit-circuitpython-servokit) ({e})") from None
    try:
        return ServoKit(channels=16, address=address)
    except (OSError, ValueError, RuntimeError) as e:
        raise HardwareError(f"hardware.pca9685_address = {address:#x}: no PCA9685 answers on I2C "
                            f"(enable I2C in raspi-config, check wiring) ({e})") from None
