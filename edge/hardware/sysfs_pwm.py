"""Servos on the kernel's hardware PWM (sysfs): pulses timed by the PWM block, not by a thread.

A Pi 5 has no pigpio; gpiozero's lgpio factory makes servo pulses in software and stores the duty
as int(value * 100): 1% steps, 0.2 ms at 50 Hz, about 18 degrees on a 0.5-2.5 ms servo. The PWM
block behind /sys/class/pwm/pwmchipN/pwmM takes the period and the pulse in nanoseconds, so the
angle is where the config says and the pulse does not jitter.

`dtoverlay=pwm-2chan,pin=12,func=4,pin2=13,func2=4` in /boot/firmware/config.txt puts PWM0's
channels on GPIO12 and GPIO13 (`deploy/install.sh --pwm-overlay` adds it). Channel per pin:
Pi 4 (BCM2711): GPIO12/18 -> 0, GPIO13/19 -> 1; Pi 5 (RP1): 12 -> 0, 13 -> 1, 18 -> 2, 19 -> 3.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from ecosorter.edge.errors import HardwareError
from ecosorter.edge.hardware.pulse import angle_to_pulse

SYSFS_PWM = Path("/sys/class/pwm")
FRAME_NS = 20_000_000  # 50 Hz, what hobby servos expect
# BCM pin -> PWM channel, by the SoC the pin's PWM comes from.
CHANNELS_BCM2711 = {12: 0, 18: 0, 13: 1, 19: 1}
CHANNELS_RP1 = {12: 0, 13: 1, 18: 2, 19: 3}
OVERLAY = "dtoverlay=pwm-2chan,pin=12,func=4,pin2=13,func2=4"


def board_model(root: Path = Path("/")) -> str:
    """'Raspberry Pi 5 Model B Rev 1.0', or '' off a Pi (device tree model, NUL-terminated)."""
    try:
        return (root / "proc/device-tree/model").read_bytes().rstrip(b"\0").decode("ascii", "replace").strip()
    except OSError:
        return ""


def default_channels(model: str) -> dict[int, int]:
    return dict(CHANNELS_RP1 if "Raspberry Pi 5" in model or "Compute Module 5" in model else CHANNELS_BCM2711)


def pwm_chips(root: Path = SYSFS_PWM) -> list[tuple[Path, int]]:
    """(pwmchipN folder, number of channels) for every PWM chip, lowest N first."""
    chips = []
    for d in sorted(root.glob("pwmchip*"), key=lambda p: int(p.name[7:]) if p.name[7:].isdigit() else 1 << 30):
        try:
            chips.append((d, int((d / "npwm").read_text().strip())))
        except (OSError, ValueError):
            continue
    return chips


def find_chip(chip: int = -1, root: Path = SYSFS_PWM) -> Path:
    """pwmchipN by number, or (-1) the first chip with 2 or more channels: PWM0 of a Pi 4 or Pi 5."""
    chips = pwm_chips(root)
    if chip >= 0:
        path = root / f"pwmchip{chip}"
        if not (path / "npwm").exists():
            raise HardwareError(f"hardware.pwm_chip = {chip}: {path} does not exist "
                                f"(chips here: {', '.join(d.name for d, _ in chips) or 'none'})")
        return path
    for path, n in chips:
        if n >= 2:
            return path
    raise HardwareError(f"hardware.servo_driver = 'sysfs-pwm': no PWM chip under {root}; add '{OVERLAY}' to "
                        "/boot/firmware/config.txt and reboot (sudo deploy/install.sh --pwm-overlay does it)")


class SysfsPwmServo:
    """One servo on /sys/class/pwm/pwmchipN/pwmM, with gpiozero AngularServo's small interface:
    `.angle` (None = detached), `.detach()`, `.close()`, and its angle -> pulse calibration."""

    def __init__(self, chip: Path, channel: int, *, key: str = "hardware.servo", min_angle: float = -90.0,
                 max_angle: float = 90.0, min_pulse_width: float = 0.0005, max_pulse_width: float = 0.0025,
                 frame_width: float = FRAME_NS / 1e9, export_timeout_s: float = 1.0):
        if not min_pulse_width < max_pulse_width <= frame_width:
            raise HardwareError(f"{key}: pulse widths {min_pulse_width}..{max_pulse_width} s must rise and fit "
                                f"in the {frame_width} s frame")
        if min_angle == max_angle:
            raise HardwareError(f"{key}: min_angle and max_angle are both {min_angle}")
        self.key, self.chip, self.channel = key, Path(chip), channel
        self.min_angle, self.max_angle = min_angle, max_angle
        self.min_ns, self.max_ns = round(min_pulse_width * 1e9), round(max_pulse_width * 1e9)
        self.period_ns = round(frame_width * 1e9)
        self.path = self.chip / f"pwm{channel}"
        self._angle: float | None = None
        self._closed = False
        try:
            npwm = int((self.chip / "npwm").read_text().strip())
        except (OSError, ValueError) as e:
            raise HardwareError(f"{key}: {self.chip}/npwm cannot be read ({e}); is the PWM overlay loaded?") from None
        if not 0 <= channel < npwm:
            raise HardwareError(f"{key}: PWM channel {channel} does not exist on {self.chip} (it has {npwm}); "
                                "set hardware.pwm_channels or hardware.pwm_chip")
        self._exported_here = False
        if not self.path.is_dir():
            self._write(self.chip / "export", channel, busy_ok=True)
            self._exported_here = True
            self._wait_for_udev(export_timeout_s)
        # duty 0 first: the kernel refuses a period shorter than the duty already set
        self._write(self.path / "duty_cycle", 0)
        self._write(self.path / "period", self.period_ns)
        self._write(self.path / "enable", 1)

    def _wait_for_udev(self, timeout_s: float) -> None:
        # export creates pwmM at once, but udev changes its group to gpio a moment later
        end = time.monotonic() + timeout_s
        attr = self.path / "duty_cycle"
        while not os.access(attr, os.W_OK):
            if time.monotonic() >= end:
                what = "is not writable" if attr.exists() else "did not appear"
                raise HardwareError(f"{self.key}: {attr} {what} after export; run as a member of group gpio "
                                    "(deploy/install.sh adds the ecosorter user)")
            time.sleep(0.02)

    def _write(self, attr: Path, value: int, busy_ok: bool = False) -> None:
        try:
            attr.write_text(f"{int(value)}\n")
        except OSError as e:
            if busy_ok and e.errno == errno.EBUSY:
                return  # exported by someone else in the meantime: the channel folder is there
            raise HardwareError(f"{self.key}: cannot write {value} to {attr}: {e.strerror or e}"
                                + (" (run as a member of group gpio)" if e.errno in (errno.EACCES, errno.EPERM) else "")) from None

    def _check_open(self) -> None:
        if self._closed:
            raise HardwareError(f"{self.key}: servo on {self.path} is closed")

    def pulse_ns(self, angle: float) -> int:
        """gpiozero AngularServo's mapping: min_angle -> min pulse, max_angle -> max pulse, linear between."""
        return round(angle_to_pulse(angle, self.min_angle, self.max_angle, self.min_ns, self.max_ns, self.key))

    @property
    def angle(self) -> float | None:
        return self._angle

    @angle.setter
    def angle(self, value: float | None) -> None:
        self._check_open()
        if value is None:
            self.detach()
            return
        self._write(self.path / "duty_cycle", self.pulse_ns(float(value)))
        self._angle = float(value)

    @property
    def closed(self) -> bool:
        return self._closed

    def detach(self) -> None:
        """No pulses (the line stays low): the servo goes limp and stops humming."""
        self._check_open()
        self._write(self.path / "duty_cycle", 0)
        self._angle = None

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._write(self.path / "duty_cycle", 0)
            self._write(self.path / "enable", 0)
            if self._exported_here:
                self._write(self.chip / "unexport", self.channel)
        finally:
            self._closed = True
            self._angle = None
