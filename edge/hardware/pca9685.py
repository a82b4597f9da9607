"""Servos on a PCA9685 16-channel PWM board over I2C: the chip times the pulses, so no jitter.

Talks to the chip's registers through smbus2 (pure Python, the `pca9685` extra:
`pip install '.[edge,pca9685]'`), so nothing else (Blinka, board detection) is needed on the Pi.
Registers (NXP PCA9685 datasheet): MODE1 0x00, MODE2 0x01, LEDn_ON_L 0x06 + 4n, PRESCALE 0xFE;
the prescaler can only be written while the oscillator sleeps; bit 4 of LEDn_OFF_H is "full off".
"""

from __future__ import annotations

import time

from ecosorter.edge.errors import HardwareError
from ecosorter.edge.hardware.pulse import angle_to_pulse

MODE1, MODE2, LED0_ON_L, PRESCALE = 0x00, 0x01, 0x06, 0xFE
RESTART, AUTO_INCREMENT, SLEEP, ALLCALL = 0x80, 0x20, 0x10, 0x01
OUTDRV = 0x04  # totem-pole outputs, what servo signal lines want
FULL = 0x10  # in LEDn_ON_H / LEDn_OFF_H: always on / always off
OSCILLATOR_HZ = 25_000_000


class PCA9685:
    """One chip on one bus: frequency set once, then 12-bit pulse widths per channel."""

    def __init__(self, bus, address: int = 0x40, frequency_hz: float = 50.0, oscillator_hz: float = OSCILLATOR_HZ,
                 key: str = "hardware.pca9685_address"):
        self.bus, self.address, self.key = bus, address, key
        prescale = round(oscillator_hz / (4096 * frequency_hz)) - 1
        if not 3 <= prescale <= 255:
            raise HardwareError(f"{key}: {frequency_hz} Hz is outside what the PCA9685 can make")
        self.frequency_hz = oscillator_hz / (4096 * (prescale + 1))  # what the chip really makes
        self._open_channels: set[int] = set()
        try:
            self.bus.write_byte_data(address, MODE2, OUTDRV)
            self.bus.write_byte_data(address, MODE1, SLEEP | ALLCALL)  # sleep: prescale is writable
            self.bus.write_byte_data(address, PRESCALE, prescale)
            self.bus.write_byte_data(address, MODE1, ALLCALL | AUTO_INCREMENT)
            time.sleep(0.0005)  # the oscillator needs 500 us to start
            self.bus.write_byte_data(address, MODE1, RESTART | AUTO_INCREMENT | ALLCALL)
            if self.bus.read_byte_data(address, PRESCALE) != prescale:
                raise OSError(f"PRESCALE reads back {self.bus.read_byte_data(address, PRESCALE)}, not {prescale}")
        except OSError as e:
            raise HardwareError(f"{key} = {address:#04x}: no PCA9685 answers on I2C ({e}); enable I2C "
                                "(sudo deploy/install.sh --pca9685), check SDA/SCL wiring and `i2cdetect -y 1`") from None

    def set_ticks(self, channel: int, off: int | None) -> None:
        """The pulse rises at tick 0 and falls at `off` (of 4096 per period); None = full off."""
        data = [0, 0, 0, FULL] if off is None else [0, 0, off & 0xFF, off >> 8]
        try:
            self.bus.write_i2c_block_data(self.address, LED0_ON_L + 4 * channel, data)
        except OSError as e:
            raise HardwareError(f"{self.key} = {self.address:#04x}: writing channel {channel} failed ({e})") from None

    def ticks(self, pulse_s: float) -> int:
        return max(0, min(4095, round(pulse_s * self.frequency_hz * 4096)))

    def claim(self, channel: int, key: str) -> None:
        if not 0 <= channel <= 15:
            raise HardwareError(f"{key}: PCA9685 channel {channel} does not exist (0-15)")
        if channel in self._open_channels:
            raise HardwareError(f"{key}: PCA9685 channel {channel} is already in use")
        self._open_channels.add(channel)

    def release(self, channel: int) -> None:
        self._open_channels.discard(channel)
        if not self._open_channels:
            self.bus.close()


class PCA9685Servo:
    """One channel with gpiozero AngularServo's small interface: `.angle` (None = detached),
    `.detach()` (full off: no pulses), `.close()`, and the same angle -> pulse mapping."""

    def __init__(self, chip: PCA9685, channel: int, *, key: str = "hardware.pca9685_channels", min_angle: float = -90.0,
                 max_angle: float = 90.0, min_pulse_width: float = 0.0005, max_pulse_width: float = 0.0025):
        if not min_pulse_width < max_pulse_width:
            raise HardwareError(f"{key}: min pulse width {min_pulse_width} s must be below {max_pulse_width} s")
        self.chip, self.channel, self.key = chip, channel, key
        self.min_angle, self.max_angle = min_angle, max_angle
        self.min_pulse_width, self.max_pulse_width = min_pulse_width, max_pulse_width
        self._angle: float | None = None
        self._closed = False
        chip.claim(channel, key)
        try:
            chip.set_ticks(channel, None)  # no pulse until the first move, like initial_angle=None
        except BaseException:
            chip.release(channel)
            raise

    def pulse_s(self, angle: float) -> float:
        return angle_to_pulse(angle, self.min_angle, self.max_angle, self.min_pulse_width, self.max_pulse_width,
                              self.key)

    @property
    def angle(self) -> float | None:
        return self._angle

    @angle.setter
    def angle(self, value: float | None) -> None:
        if self._closed:
            raise HardwareError(f"{self.key}: PCA9685 channel {self.channel} is closed")
        if value is None:
            self.detach()
            return
        self.chip.set_ticks(self.channel, self.chip.ticks(self.pulse_s(float(value))))
        self._angle = float(value)

    @property
    def closed(self) -> bool:
        return self._closed

    def detach(self) -> None:
        self.chip.set_ticks(self.channel, None)
        self._angle = None

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.detach()
        finally:
            self._closed = True
            self.chip.release(self.channel)


def open_bus(bus: int, key: str = "hardware.i2c_bus"):
    """smbus2 on /dev/i2c-<bus>, with what to do when it is missing."""
    try:
        from smbus2 import SMBus
    except ImportError:
        raise HardwareError("hardware.servo_driver = 'pca9685' needs smbus2: pip install 'ecosorter[edge,pca9685]' "
                            "(sudo deploy/install.sh --pca9685 does it)") from None
    try:
        return SMBus(bus)
    except OSError as e:
        raise HardwareError(f"{key} = {bus}: /dev/i2c-{bus} cannot be opened ({e.strerror or e}); enable I2C "
                            "(sudo deploy/install.sh --pca9685 or raspi-config) and reboot") from None
