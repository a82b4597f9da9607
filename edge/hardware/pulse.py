"""The one angle <-> pulse mapping every servo driver shares (gpiozero AngularServo's): min_angle
gives the minimum pulse, max_angle the maximum, linear between. Any time unit: it is linear."""

from __future__ import annotations

from ecosorter.edge.errors import HardwareError


def angle_to_pulse(angle: float, min_angle: float, max_angle: float, min_pulse: float, max_pulse: float,
                   key: str = "servo") -> float:
    lo, hi = sorted((min_angle, max_angle))
    if not lo <= angle <= hi:
        raise HardwareError(f"{key}: angle {angle:g} is outside {lo:g}..{hi:g}")
    return min_pulse + (angle - min_angle) / (max_angle - min_angle) * (max_pulse - min_pulse)


def pulse_to_angle(pulse: float, min_angle: float, max_angle: float, min_pulse: float, max_pulse: float) -> float:
    return min_angle + (pulse - min_pulse) / (max_pulse - min_pulse) * (max_angle - min_angle)
