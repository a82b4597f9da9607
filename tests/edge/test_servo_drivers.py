"""servo_driver = sysfs-pwm and pca9685, below their libraries: a fake /sys/class/pwm tree whose
attribute files are FIFOs read by a thread (so every write the kernel would see is on a timeline),
and a fake I2C bus holding a PCA9685's registers with the datasheet's write rules."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from ecosorter.edge.clock import VirtualClock
from ecosorter.edge.config import load_config
from ecosorter.edge.errors import ConfigError, HardwareError
from ecosorter.edge.hardware import make_actuator
from ecosorter.edge.hardware.check import compartment_count
from ecosorter.edge.hardware.factory import servo_maker
from ecosorter.edge.hardware.pca9685 import LED0_ON_L, MODE1, PCA9685, PRESCALE, PCA9685Servo
from ecosorter.edge.hardware.sysfs_pwm import SysfsPwmServo, board_model, find_chip
from ecosorter.edge.machine import Machine

FAST = {"hardware.settle_s": 0.02, "hardware.drop_s": 0.03, "hardware.move_budget_s": 1.0}


def hw(**overrides):
    return load_config(overrides={"hardware.pin_factory": "mock", **overrides}).hardware


def actuator(cfg, factory, servos):
    """The real actuator in virtual time (no real sleeping), its servos from `servos`."""
    clock = VirtualClock()
    machine = Machine(clock, cfg.resume_delay_s, cfg.interlock_resume)
    return make_actuator(cfg, compartment_count(cfg), factory, machine, clock, servos=servos)


def pulse_us(angle: float) -> float:
    """0.5-2.5 ms over -90..90 degrees, the defaults."""
    return 500 + (angle + 90) / 180 * 2000


# --- a fake sysfs PWM tree --------------------------------------------------------------------

class FakePwmSysfs:
    """pwmchipN/{npwm, export, unexport}; export makes pwmM/{period, duty_cycle, enable}. Those are
    FIFOs held open read-write here, so every value the driver writes stays queued, in order, until
    the test reads it: a per-attribute timeline of what the kernel would have been told."""

    def __init__(self, root: Path, chips: dict[int, int]):
        self.root, self.fds, self.seen = root, {}, {}
        for n, npwm in chips.items():
            chip = root / f"pwmchip{n}"
            chip.mkdir(parents=True)
            (chip / "npwm").write_text(f"{npwm}\n")
            self._fifo(chip / "unexport", (n, None, "unexport"))
            # the kernel makes pwmM as soon as the export write returns; here a thread does
            fd = self._fifo(chip / "export", None)
            threading.Thread(target=self._exporter, args=(fd, chip, n), daemon=True).start()

    def _fifo(self, path: Path, key) -> int:
        os.mkfifo(path)
        fd = os.open(path, os.O_RDWR | (os.O_NONBLOCK if key else 0))
        if key:
            self.fds[key] = fd
            self.seen[key] = []
        return fd

    def _exporter(self, fd: int, chip: Path, n: int) -> None:
        while data := os.read(fd, 4096):
            for word in data.split():
                ch = int(word)
                tmp = chip / f".pwm{ch}"  # all attributes at once, as the kernel shows them
                tmp.mkdir()
                for attr in ("period", "duty_cycle", "enable"):
                    self._fifo(tmp / attr, (n, ch, attr))
                tmp.rename(chip / f"pwm{ch}")

    def writes(self, ch: int, attr: str, chip: int = 0) -> list[int]:
        """Every value written to pwmchip<chip>/pwm<ch>/<attr> so far, oldest first."""
        for key, fd in list(self.fds.items()):
            try:
                while data := os.read(fd, 65536):
                    self.seen[key] += [int(w) for w in data.split()]
            except BlockingIOError:
                pass
        return self.seen.get((chip, ch, attr), [])

    def unexported(self, chip: int = 0) -> list[int]:
        self.writes(-1, "")
        return self.seen[(chip, None, "unexport")]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


@pytest.fixture()
def sysfs(tmp_path):
    fake = FakePwmSysfs(tmp_path / "pwm", {0: 2})
    yield fake
    fake.close()


def pi_root(tmp_path: Path, model: str) -> Path:
    root = tmp_path / "board"
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(model.encode() + b"\0")
    return root


def test_sysfs_servo_exports_sets_nanoseconds_and_detaches(sysfs):
    s = SysfsPwmServo(sysfs.root / "pwmchip0", 1, key="hardware.trapdoor_pin")
    assert s.path.is_dir()
    assert sysfs.writes(1, "duty_cycle") == [0] and sysfs.writes(1, "period") == [20_000_000]
    assert sysfs.writes(1, "enable") == [1]
    s.angle = -90
    s.angle = 30
    s.angle = 90
    assert sysfs.writes(1, "duty_cycle") == [0, 500_000, round(pulse_us(30) * 1000), 2_500_000]
    assert s.angle == 90
    s.detach()
    assert s.angle is None and sysfs.writes(1, "duty_cycle")[-1] == 0
    s.close()
    assert sysfs.writes(1, "duty_cycle")[-2:] == [0, 0] and sysfs.writes(1, "enable") == [1, 0]
    assert sysfs.unexported() == [1]
    with pytest.raises(HardwareError, match="closed"):
        s.angle = 0
    # a channel someone already exported is used as it is, and left exported
    t = SysfsPwmServo(sysfs.root / "pwmchip0", 1)
    t.close()
    assert sysfs.unexported() == [1]


def test_sysfs_calibration_equals_gpiozero_angular_servo(sysfs, factory):
    """Same angle -> same pulse as gpiozero's AngularServo, for custom widths and reversed angles."""
    import gpiozero

    for lo, hi, amin, amax in [(0.0005, 0.0025, -90, 90), (0.0006, 0.0024, 90, -90), (0.001, 0.002, 0, 180)]:
        ref = gpiozero.AngularServo(18, min_angle=amin, max_angle=amax, min_pulse_width=lo,
                                    max_pulse_width=hi, pin_factory=factory)
        s = SysfsPwmServo(sysfs.root / "pwmchip0", 0, min_angle=amin, max_angle=amax,
                          min_pulse_width=lo, max_pulse_width=hi)
        for a in (amin, (amin + amax) / 2, amin + 0.3 * (amax - amin), amax):
            ref.angle = a
            assert s.pulse_ns(a) == pytest.approx(ref.pulse_width * 1e9, abs=1)
        ref.close()
        s.close()


def test_sysfs_angle_outside_range_names_the_key(sysfs):
    s = SysfsPwmServo(sysfs.root / "pwmchip0", 0, key="hardware.chute_pin")
    with pytest.raises(HardwareError, match=r"hardware.chute_pin: angle 120 is outside -90..90"):
        s.angle = 120
    s.close()


def test_sysfs_errors_name_path_and_key(tmp_path, sysfs):
    with pytest.raises(HardwareError, match=r"hardware.chute_pin: PWM channel 3 does not exist on .*pwmchip0 \(it has 2\)"):
        SysfsPwmServo(sysfs.root / "pwmchip0", 3, key="hardware.chute_pin")
    with pytest.raises(HardwareError, match=r"hardware.pwm_chip = 4: .*pwmchip4 does not exist \(chips here: pwmchip0\)"):
        find_chip(4, sysfs.root)
    empty = tmp_path / "nopwm"
    empty.mkdir()
    with pytest.raises(HardwareError, match=r"no PWM chip under .*nopwm; add 'dtoverlay=pwm-2chan.*--pwm-overlay"):
        find_chip(-1, empty)
    # a plain file where the kernel's attribute should be: the write fails, the message says where
    d = sysfs.root / "pwmchip0" / "pwm1"
    d.mkdir()
    (d / "duty_cycle").mkdir()  # writing to a folder: EISDIR
    with pytest.raises(HardwareError, match=r"hardware.trapdoor_pin: cannot write 0 to .*pwmchip0/pwm1/duty_cycle"):
        SysfsPwmServo(sysfs.root / "pwmchip0", 1, key="hardware.trapdoor_pin")


def test_board_model_picks_the_channel_table(tmp_path):
    assert board_model(pi_root(tmp_path, "Raspberry Pi 5 Model B Rev 1.0")) == "Raspberry Pi 5 Model B Rev 1.0"
    assert board_model(tmp_path / "nowhere") == ""
    fake = FakePwmSysfs(tmp_path / "pwm", {0: 2, 2: 4})
    try:
        # Pi 5 (RP1): GPIO18/19 are channels 2/3 of the 4-channel chip
        cfg = hw(**{"hardware.profile": "chute", "hardware.servo_driver": "sysfs-pwm", "hardware.pwm_chip": 2,
                    "hardware.chute_pin": 18, "hardware.trapdoor_pin": 19, "hardware.interlock_pin": 17})
        make = servo_maker(cfg, sysfs_root=fake.root, board_root=pi_root(tmp_path / "p5", "Raspberry Pi 5 Model B"))
        s = make(19)
        assert s.path == fake.root / "pwmchip2" / "pwm3" and s.key == "hardware.trapdoor_pin"
        s.close()
        # Pi 4 (BCM2711): 12 and 18 share channel 0
        with pytest.raises(ConfigError, match=r"hardware.trapdoor_pin: GPIO18 is on PWM channel 0, already driving hardware.chute_pin"):
            servo_maker(cfg.__class__(**{**cfg.__dict__, "chute_pin": 12, "trapdoor_pin": 18}), sysfs_root=fake.root,
                        board_root=pi_root(tmp_path / "p4", "Raspberry Pi 4 Model B Rev 1.5"))
    finally:
        fake.close()


def test_sysfs_pwm_refuses_pins_without_a_channel(sysfs, tmp_path):
    cfg = hw(**{"hardware.profile": "flaps", "hardware.servo_driver": "sysfs-pwm"})
    with pytest.raises(ConfigError, match=r"hardware.flap_pins\[0\]: GPIO5 has no hardware PWM channel"):
        servo_maker(cfg, sysfs_root=sysfs.root, board_root=tmp_path)
    cfg = hw(**{"hardware.profile": "chute", "hardware.servo_driver": "sysfs-pwm",
                "hardware.pwm_channels": {"12": 1, "13": 0}})
    make = servo_maker(cfg, sysfs_root=sysfs.root, board_root=tmp_path)
    s = make(12)
    assert s.channel == 1  # the table in the config wins over the board's
    s.close()


def test_chute_on_sysfs_pwm_timeline_and_safe_exit(sysfs, factory, tmp_path):
    cfg = hw(**{"hardware.profile": "chute", "hardware.servo_driver": "sysfs-pwm", **FAST})
    servos = servo_maker(cfg, sysfs_root=sysfs.root, board_root=pi_root(tmp_path, "Raspberry Pi 4 Model B Rev 1.5"))
    ns = {a: round(pulse_us(a) * 1000) for a in (-90, 0, 60)}
    with actuator(cfg, factory, servos) as act:
        # built in its safe state: door closed, chute home, then both detached
        assert sysfs.writes(0, "duty_cycle") == [0, ns[0], 0]
        assert sysfs.writes(1, "duty_cycle") == [0, ns[-90], 0]
        assert act.route(5).ok
        assert sysfs.writes(0, "duty_cycle")[3:] == [ns[60], ns[0], 0]  # to compartment 5, home, detached
        assert sysfs.writes(1, "duty_cycle")[3:] == [ns[0], ns[-90], 0]  # open, closed, detached
    # close: door shut and chute home first, then no pulses, disabled, unexported
    door, chute = sysfs.writes(1, "duty_cycle")[6:], sysfs.writes(0, "duty_cycle")[6:]
    assert door[0] == ns[-90] and chute[0] == ns[0] and set(door[1:]) == set(chute[1:]) == {0}
    assert sysfs.writes(0, "enable") == sysfs.writes(1, "enable") == [1, 0]
    assert sorted(sysfs.unexported()) == [0, 1]


# --- a fake I2C bus with a PCA9685 on it ----------------------------------------------------

class FakePCA9685Bus:
    """smbus2's calls, on a PCA9685 register file: PRESCALE is only written while MODE1.SLEEP is
    set, block writes auto-increment only with MODE1.AI, other addresses do not acknowledge."""

    def __init__(self, address: int = 0x40):
        self.address, self.closed = address, False
        self.regs = [0] * 256
        self.regs[MODE1] = 0x11  # power-on: SLEEP | ALLCALL
        self.regs[PRESCALE] = 0x1E
        for ch in range(16):
            self.regs[LED0_ON_L + 4 * ch + 3] = 0x10  # power-on: full off
        self.timeline: list[tuple[int, float | None]] = []

    def _ack(self, addr: int) -> None:
        if addr != self.address or self.closed:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")

    def _write(self, reg: int, value: int) -> None:
        if reg == PRESCALE and not self.regs[MODE1] & 0x10:
            return  # the datasheet: PRE_SCALE writes are blocked while the oscillator runs
        self.regs[reg] = value & 0xFF

    def write_byte_data(self, addr: int, reg: int, value: int) -> None:
        self._ack(addr)
        self._write(reg, value)
        self._note(reg, reg)

    def read_byte_data(self, addr: int, reg: int) -> int:
        self._ack(addr)
        return self.regs[reg]

    def write_i2c_block_data(self, addr: int, reg: int, data: list[int]) -> None:
        self._ack(addr)
        step = 1 if self.regs[MODE1] & 0x20 else 0
        for i, v in enumerate(data):
            self._write(reg + i * step, v)
        self._note(reg, reg + (len(data) - 1) * step)

    def _note(self, first: int, last: int) -> None:
        for ch in range(16):
            base = LED0_ON_L + 4 * ch
            if first <= base + 3 and last >= base:
                self.timeline.append((ch, self.pulse_us(ch)))

    def pulse_us(self, ch: int) -> float | None:
        """What the chip puts out on a channel: pulse width in microseconds, None = no pulses."""
        on_l, on_h, off_l, off_h = self.regs[LED0_ON_L + 4 * ch: LED0_ON_L + 4 * ch + 4]
        if off_h & 0x10 or self.regs[MODE1] & 0x10:
            return None
        ticks = ((off_h & 0x0F) << 8 | off_l) - ((on_h & 0x0F) << 8 | on_l)
        freq = 25e6 / (4096 * (self.regs[PRESCALE] + 1))
        return ticks / (4096 * freq) * 1e6

    def close(self) -> None:
        self.closed = True


def test_pca9685_sets_50hz_and_pulses_within_a_tick():
    bus = FakePCA9685Bus()
    chip = PCA9685(bus, 0x40)
    assert bus.regs[PRESCALE] == 121 and not bus.regs[MODE1] & 0x10  # awake at ~50 Hz
    assert chip.frequency_hz == pytest.approx(50.0, abs=0.1)
    tick_us = 1e6 / (4096 * chip.frequency_hz)
    s = PCA9685Servo(chip, 3)
    assert bus.pulse_us(3) is None  # no pulse until the first move
    for a in (-90, -30, 0, 45, 90):
        s.angle = a
        assert bus.pulse_us(3) == pytest.approx(pulse_us(a), abs=tick_us / 2 + 1e-6)
    s.detach()
    assert bus.pulse_us(3) is None and s.angle is None
    s.close()
    assert bus.closed  # the last channel closed the bus


def test_pca9685_wrong_address_and_bad_channels():
    with pytest.raises(HardwareError, match=r"hardware.pca9685_address = 0x41: no PCA9685 answers on I2C.*i2cdetect"):
        PCA9685(FakePCA9685Bus(0x40), 0x41)
    chip = PCA9685(FakePCA9685Bus(), 0x40)
    with pytest.raises(HardwareError, match="channel 16 does not exist"):
        PCA9685Servo(chip, 16)
    a = PCA9685Servo(chip, 0, key="hardware.pca9685_channels (hardware.chute_pin)")
    with pytest.raises(HardwareError, match="channel 0 is already in use"):
        PCA9685Servo(chip, 0)
    with pytest.raises(HardwareError, match=r"\(hardware.chute_pin\): angle -91 is outside"):
        a.angle = -91
    a.close()


def test_chute_on_pca9685_routes_and_leaves_full_off(factory):
    bus = FakePCA9685Bus()
    cfg = hw(**{"hardware.profile": "chute", "hardware.servo_driver": "pca9685",
                "hardware.pca9685_channels": [4, 5], "hardware.chute_pin": 2, **FAST})
    # chute_pin 2 would clash with I2C SDA on gpiozero; on a PCA9685 the servo pins claim nothing
    with actuator(cfg, factory, servo_maker(cfg, bus=bus)) as act:
        n = len(bus.timeline)
        assert act.route(0).ok
        moves = bus.timeline[n:]
    half_tick = 1e6 / (4096 * 50) / 2
    chute = [p for c, p in moves if c == 4]
    door = [p for c, p in moves if c == 5]
    assert chute[:2] == pytest.approx([500, 1500], abs=half_tick) and chute[2:] == [None]  # compartment 0, home
    assert door[:2] == pytest.approx([1500, 500], abs=half_tick) and door[2:] == [None]  # open, closed
    assert bus.pulse_us(4) is None and bus.pulse_us(5) is None and bus.closed


def test_legacy_pca9685_profile_uses_the_same_driver(factory):
    bus = FakePCA9685Bus()
    cfg = hw(**{"hardware.profile": "pca9685", **FAST})
    with actuator(cfg, factory, servo_maker(cfg, bus=bus)) as act:
        assert act.route(6).ok
    assert [c for c, _ in bus.timeline if _ is not None][:2] == [1, 0]  # safe state: door (1) first, then chute (0)
    assert bus.closed


def test_pca9685_needs_a_channel_per_flap():
    cfg = hw(**{"hardware.profile": "flaps", "hardware.servo_driver": "pca9685"})
    with pytest.raises(ConfigError, match=r"hardware.pca9685_channels: 2 given but the compartment map uses 7"):
        servo_maker(cfg, bus=FakePCA9685Bus())
    with pytest.raises(ConfigError, match=r"hardware.pca9685_channels: \[1, 1\] must be distinct"):
        hw(**{"hardware.pca9685_channels": [1, 1]})
    with pytest.raises(ConfigError, match=r"hardware.pwm_channels.x"):
        hw(**{"hardware.pwm_channels": {"x": 1}})
