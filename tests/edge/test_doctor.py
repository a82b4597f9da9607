"""`ecosorter doctor` on fake board roots (device-tree model, /dev, /sys/class/pwm, firmware
files), canned command output for timedatectl/vcgencmd, and a real Mosquitto for the broker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from ecosorter.edge.config import load_config
from ecosorter.edge.doctor import FAIL, OK, RELEASED, SKIP, WARN, Doctor, Problem
from ecosorter.edge.errors import EcoSorterError
from tests.edge.test_servo_drivers import FakePCA9685Bus

AFTER_RELEASE = dt.datetime.fromisoformat(RELEASED).replace(tzinfo=dt.timezone.utc).timestamp() + 86400


def doctor(tmp_path: Path, model: str | None = "Raspberry Pi 4 Model B Rev 1.5", cmds: dict | None = None,
           now: float = AFTER_RELEASE, **overrides) -> Doctor:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True, exist_ok=True)
    if model:
        (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
        (root / "proc/device-tree/model").write_bytes(model.encode() + b"\0")
    cfg = load_config(overrides={"hardware.pin_factory": "mock", "record.state_dir": str(tmp_path / "state"),
                                 **overrides})
    return Doctor(cfg, root, run_cmd=lambda cmd: (cmds or {}).get(cmd[0]), now=lambda: now, broker_timeout_s=5)


def state(fn) -> tuple[str, str]:
    try:
        return fn()
    except Problem as e:
        return e.state, str(e)
    except EcoSorterError as e:  # run_doctor reports any of these as FAIL
        return FAIL, str(e)


def test_board_model_or_what_it_means(tmp_path):
    assert state(doctor(tmp_path, "Raspberry Pi 5 Model B Rev 1.0").board)[1].startswith("Raspberry Pi 5 Model B Rev 1.0")
    s, msg = state(doctor(tmp_path / "x", None).board)
    assert s == WARN and "not a Raspberry Pi" in msg


def test_budget_against_the_longest_move(tmp_path):
    chute = {"hardware.profile": "chute"}
    s, msg = state(doctor(tmp_path, **chute).budget)  # defaults: 180 deg at 300 deg/s + 0.35 s settle
    assert s == OK and msg == "longest move 0.95 s (180 deg at 300 deg/s + settle 0.35 s) within move_budget_s = 2"
    s, msg = state(doctor(tmp_path, **chute, **{"hardware.move_budget_s": 1.0}).budget)
    assert s == WARN and "within 10% of hardware.move_budget_s = 1" in msg
    # config validation refuses a budget below the longest move; doctor says so for a built config too
    d = doctor(tmp_path, **chute)
    d.cfg = dataclasses.replace(d.cfg, hardware=dataclasses.replace(d.cfg.hardware, move_budget_s=0.5))
    s, msg = state(d.budget)
    assert s == FAIL and "takes 0.95 s" in msg and "hardware.move_budget_s = 0.5" in msg
    assert state(doctor(tmp_path).budget)[0] == SKIP  # leds


def make_pwm(root: Path, chips: dict[int, int]) -> None:
    for n, npwm in chips.items():
        d = root / f"sys/class/pwm/pwmchip{n}"
        d.mkdir(parents=True)
        (d / "npwm").write_text(f"{npwm}\n")


def test_pwm_channels_for_sysfs_pwm(tmp_path):
    sysfs = {"hardware.profile": "chute", "hardware.servo_driver": "sysfs-pwm"}
    d = doctor(tmp_path, "Raspberry Pi 4 Model B Rev 1.5", **sysfs)
    s, msg = state(d.pwm)
    assert s == FAIL and "no PWM chip" in msg and "dtoverlay=pwm-2chan" in msg and "--pwm-overlay" in msg
    make_pwm(d.root, {0: 2})
    assert state(d.pwm) == (OK, "GPIO12 -> pwmchip0/pwm0, GPIO13 -> pwmchip0/pwm1 (2 channels)")
    # a Pi 5 with GPIO18/19: RP1 channels 2 and 3, which a 2-channel chip does not have
    p5 = doctor(tmp_path / "p5", "Raspberry Pi 5 Model B Rev 1.0", **sysfs,
                **{"hardware.chute_pin": 18, "hardware.trapdoor_pin": 19})
    make_pwm(p5.root, {0: 2})
    s, msg = state(p5.pwm)
    assert s == FAIL and "hardware.chute_pin = 18 needs channel 2 but pwmchip0 has 2" in msg
    assert state(doctor(tmp_path / "g", **{"hardware.profile": "chute"}).pwm)[0] == SKIP


def test_i2c_device_node(tmp_path):
    d = doctor(tmp_path, **{"hardware.profile": "chute", "hardware.servo_driver": "pca9685"})
    s, msg = state(lambda: d.i2c(probe=False))
    assert s == FAIL and "hardware.i2c_bus = 1:" in msg and "dev/i2c-1 is missing" in msg
    (d.root / "dev/i2c-1").touch()
    assert state(lambda: d.i2c(probe=False)) == (OK, f"{d.root / 'dev/i2c-1'} present")
    # the probe reads MODE1 at the configured address, on a bus with a PCA9685 at 0x40
    d.open_i2c = lambda n: FakePCA9685Bus(0x40)
    assert state(d.i2c) == (OK, f"PCA9685 at 0x40 on {d.root / 'dev/i2c-1'} (MODE1 0x11)")
    other = doctor(tmp_path, **{"hardware.profile": "chute", "hardware.servo_driver": "pca9685",
                                "hardware.pca9685_address": 0x41})
    other.open_i2c = lambda n: FakePCA9685Bus(0x40)
    s, msg = state(other.i2c)
    assert s == FAIL and "hardware.pca9685_address = 0x41: nothing answers" in msg and "i2cdetect" in msg
    assert state(doctor(tmp_path / "l").i2c)[0] == SKIP


def test_camera_presence(tmp_path):
    d = doctor(tmp_path, **{"camera.source": "opencv", "camera.device": "0"})
    s, msg = state(d.camera_present)
    assert s == FAIL and "video devices here: none" in msg
    (d.root / "dev/video2").touch()
    assert "video devices here: video2" in state(d.camera_present)[1]
    (d.root / "dev/video0").touch()
    assert state(d.camera_present)[0] == OK


class SwitchPin(MockPin):
    """A gpiozero mock input wired to a switch to GND: closed, it holds the line low against the
    pull-up that gpiozero turns on when the Button opens (a plain MockPin would go high)."""

    def __init__(self, factory, info, closed: bool = False):
        super().__init__(factory, info)
        self.closed = closed

    def _set_pull(self, value):
        super()._set_pull(value)
        if self.closed:
            self.drive_low()


def test_lid_and_fill_sensors_as_they_read_now(tmp_path):
    pins = MockFactory()
    d = doctor(tmp_path, **{"hardware.profile": "chute", "hardware.interlock_pin": 17,
                            "hardware.full_sensor_pins": {"2": 22, "5": 23}})
    d.pins = pins
    lid, full2, full5 = (pins.pin(n, pin_class=SwitchPin) for n in (17, 22, 23))
    lid.closed = True
    assert state(d.sensors) == (OK, "lid closed (GPIO17), compartment 2 not full, compartment 5 not full")
    lid.closed, full5.closed = False, True  # lid opened; compartment 5's sensor closed: full
    s, msg = state(d.sensors)
    assert s == WARN and "lid open now (hardware.interlock_pin = 17)" in msg
    assert "compartment 5 reads full now (hardware.full_sensor_pins.5 = 23)" in msg and "compartment 2" not in msg
    assert state(doctor(tmp_path / "n").sensors)[0] == SKIP


def test_clock_without_rtc_and_ntp_state(tmp_path):
    s, msg = state(doctor(tmp_path, now=0.0).clock)
    assert s == FAIL and "1970-01-01" in msg and "no RTC" in msg
    assert state(doctor(tmp_path, cmds={"timedatectl": "no\n"}).clock)[0] == WARN
    assert state(doctor(tmp_path, cmds={"timedatectl": "yes\n"}).clock)[1].endswith("NTP synchronised")
    assert "NTP state unknown" in state(doctor(tmp_path).clock)[1]


def test_power_from_vcgencmd_or_firmware_file(tmp_path):
    s, msg = state(doctor(tmp_path, cmds={"vcgencmd": "throttled=0x50005\n"}).power)
    assert s == FAIL and "under-voltage now" in msg and "throttled now" in msg
    s, msg = state(doctor(tmp_path, cmds={"vcgencmd": "throttled=0x50000\n"}).power)
    assert s == WARN and "since boot: under-voltage, throttling" in msg
    assert state(doctor(tmp_path, cmds={"vcgencmd": "throttled=0x0\n"}).power)[0] == OK
    d = doctor(tmp_path)
    assert state(d.power)[0] == SKIP
    fw = d.root / "sys/devices/platform/soc/soc:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text("50000\n")
    assert state(d.power)[0] == WARN


def test_disk_quota_larger_than_the_disk(tmp_path):
    assert state(doctor(tmp_path).disk)[0] == OK
    s, msg = state(doctor(tmp_path, **{"record.capture_quota_mb": 1e12}).disk)
    assert s == WARN and "record.capture_quota_mb = 1e+12" in msg


@pytest.mark.broker
def test_broker_with_credentials(tmp_path, mosquitto):
    mqtt = {"mqtt.enabled": True, "mqtt.host": "127.0.0.1", "mqtt.port": mosquitto.port}
    assert state(doctor(tmp_path, **mqtt).broker) == (OK, f"mqtt 127.0.0.1:{mosquitto.port} accepts anonymous login")
    # the same broker with a password file: right and wrong credentials
    mosquitto.stop()
    pw = tmp_path / "passwd"
    subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", "-c", str(pw), "bin1", "s3cret"],
                   check=True, capture_output=True)
    # started as root, mosquitto switches to its own user, which cannot enter pytest's 0700 folders
    stay = "user root\n" if os.geteuid() == 0 else ""
    mosquitto.conf.write_text(mosquitto.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
                              + f"password_file {pw}\n{stay}")
    mosquitto.start()
    good = {**mqtt, "mqtt.username": "bin1", "mqtt.password": "s3cret"}
    assert state(doctor(tmp_path, **good).broker)[0] == OK
    s, msg = state(doctor(tmp_path, **{**good, "mqtt.password": "wrong"}).broker)
    assert s == FAIL and "refused" in msg and "mqtt.username / mqtt.password" in msg
    mosquitto.stop()
    s, msg = state(doctor(tmp_path, **good).broker)
    assert s == FAIL and "cannot connect" in msg and "mqtt.host" in msg


def run_cli(tmp_path, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "ecosorter.edge.cli", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)


def test_no_pin_library_gets_advice_not_a_traceback(tmp_path):
    """Off a Pi there is no lgpio/RPi.GPIO/pigpio: the real gpiozero raises BadPinFactory."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[hardware]\nprofile = "chute"\n[camera]\nsource = "folder"\ndevice = "{tmp_path}"\n'
                   f'[record]\nstate_dir = "{tmp_path / "state"}"\n[status]\nenabled = false\n')
    if Path("/proc/device-tree/model").exists():
        pytest.skip("this machine is a Pi: a pin library may load")
    r = run_cli(tmp_path, "run", "--config", str(cfg), "--max-items", "1")
    assert r.returncode == 2, r.stderr
    assert "python3-lgpio" in r.stderr and 'pin_factory = "mock"' in r.stderr and "Traceback" not in r.stderr
    d = run_cli(tmp_path, "doctor", "--config", str(cfg))
    assert d.returncode == 1
    line = next(x for x in d.stdout.splitlines() if x.startswith("pin factory"))
    assert "FAIL" in line and "python3-lgpio" in line
    budget = next(x for x in d.stdout.splitlines() if x.startswith("budget"))
    assert "OK" in budget


def test_model_line_checks_the_model_run_would_load(tmp_path, capsys):
    """Without model.path the bin runs the installed model (record.state_dir/models/current.tflite):
    doctor must load and name that one, not the bundled demo."""
    import argparse

    from ecosorter.edge.doctor import run_doctor

    demo = Path(__file__).resolve().parents[2] / "edge" / "demo" / "demo_int8.tflite"
    state_dir = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[hardware]\npin_factory = "mock"\n[camera]\nsource = "folder"\ndevice = "{tmp_path}"\n'
                   f'[record]\nstate_dir = "{state_dir}"\n')
    root = tmp_path / "root"
    root.mkdir()

    def model_line() -> str:
        run_doctor(argparse.Namespace(config=cfg), root=root)
        return next(x for x in capsys.readouterr().out.splitlines() if x.startswith("model"))

    line = model_line()
    assert "OK" in line and str(demo) in line and "the bundled demo" in line
    installed = state_dir / "models" / "current.tflite"
    installed.parent.mkdir(parents=True)
    shutil.copyfile(demo, installed)
    line = model_line()
    assert "OK" in line and str(installed) in line and "(installed;" in line
    installed.write_bytes(b"not a model")  # a broken installed model is a FAIL, not a silent demo
    assert "FAIL" in model_line()


FAST = {"hardware.servo_speed_deg_s": 3000.0, "hardware.settle_s": 0.0}  # parking in milliseconds


def servo_lines(d: Doctor) -> dict[str, tuple[str, str]]:
    """Build the actuator as `doctor` does (it parks), then its one line per servo."""
    state(d.actuator)
    return {part: (s, detail) for part, s, detail in d.servo_lines}


def test_each_servo_says_plainly_when_it_is_open_loop(tmp_path):
    from ecosorter.edge.simulate.pins import ClockedMockFactory

    d = doctor(tmp_path, **{"hardware.profile": "chute", **FAST})
    d.pins = ClockedMockFactory()
    lines = servo_lines(d)
    assert list(lines) == ["servo chute", "servo trapdoor"]
    for name, key in (("chute", "chute_home_switch_pin"), ("trapdoor", "trapdoor_closed_switch_pin")):
        s, detail = lines[f"servo {name}"]
        assert s == WARN and detail.startswith(f"OPEN-LOOP: no position switch (hardware.{key} = -1) and no "
                                               "position feedback (hardware.feedback_adc = 'none'): a jam cannot "
                                               "be seen"), detail
    flaps = doctor(tmp_path / "f", **{"hardware.profile": "flaps", **FAST})
    flaps.pins = ClockedMockFactory()
    lines = servo_lines(flaps)
    assert list(lines) == [f"servo flap{i}" for i in range(7)]
    assert all(s == WARN and "no position switch (flaps have none)" in t for s, t in lines.values())
    leds = doctor(tmp_path / "l")
    leds.pins = ClockedMockFactory()
    assert servo_lines(leds) == {"servos": (SKIP, "profile leds: no servos")}


def test_position_switches_as_they_read_after_parking(tmp_path):
    from ecosorter.edge.simulate.pins import ClockedMockFactory

    switches = {"hardware.profile": "chute", "hardware.chute_home_switch_pin": 20,
                "hardware.trapdoor_closed_switch_pin": 21, **FAST}
    pins = ClockedMockFactory()
    home, shut = (pins.pin(n, pin_class=SwitchPin) for n in (20, 21))
    home.closed = shut.closed = True  # both servos where parking sends them
    d = doctor(tmp_path, **switches)
    d.pins = pins
    lines = servo_lines(d)
    assert state(d.actuator)[0] == OK
    s, detail = lines["servo chute"]
    assert s == OK and detail.startswith("position switch GPIO20 (hardware.chute_home_switch_pin) reads closed: at home")
    assert "a jam is seen only leaving or reaching 0 deg" in detail and "OPEN-LOOP" not in detail
    assert lines["servo trapdoor"][0] == OK and "GPIO21 (hardware.trapdoor_closed_switch_pin) reads closed: shut" \
        in lines["servo trapdoor"][1]

    pins = ClockedMockFactory()
    home, shut = (pins.pin(n, pin_class=SwitchPin) for n in (20, 21))
    shut.closed = True  # the chute's switch never closes: stuck away from home, or a broken wire
    d = doctor(tmp_path / "stuck", **switches)
    d.pins = pins
    s, detail = state(d.actuator)
    assert s == FAIL and "parking stopped" in detail and "chute did not reach 0 deg" in detail
    s, detail = {p: (a, b) for p, a, b in d.servo_lines}["servo chute"]
    assert s == FAIL and "GPIO20 (hardware.chute_home_switch_pin) reads open, not at home (0 deg) after parking" in detail


def test_position_feedback_reads_in_degrees_or_says_it_is_not_calibrated(tmp_path):
    from ecosorter.edge.simulate.adc import SimMCP3008
    from ecosorter.edge.simulate.pins import ClockedMockFactory

    feedback = {"hardware.profile": "chute", "hardware.feedback_adc": "mcp3008", "hardware.feedback_channels": [3, 5],
                **FAST}
    reading = {3: 0.5, 5: 0.1}  # chute at 0 deg (home), trapdoor at -90 (shut) on a 0.1-0.9 span

    def rig(path, **more) -> Doctor:
        pins = ClockedMockFactory()
        SimMCP3008({ch: (lambda ch=ch: reading[ch]) for ch in reading}, pins)
        d = doctor(path, **feedback, **more)
        d.pins = pins
        return d

    def read(detail: str, channel: int) -> tuple[float, int]:
        """(the 0-1 reading, degrees) a line gives for a channel: 10 bits, so within 0.002 of the input."""
        m = re.search(rf"channel {channel} reads (\d\.\d{{3}})(?: = (-?\d+) deg)?", detail)
        assert m, detail
        return float(m[1]), (int(m[2]) if m[2] is not None else None)

    calibrated = {"hardware.feedback_at_min": [0.1, 0.1], "hardware.feedback_at_max": [0.9, 0.9]}
    lines = servo_lines(rig(tmp_path, **calibrated))
    assert lines["servo chute"][0] == OK and lines["servo trapdoor"][0] == OK, lines
    assert lines["servo chute"][1].startswith("position feedback mcp3008 channel 3 reads ")
    v, d = read(lines["servo chute"][1], 3)
    assert v == pytest.approx(0.5, abs=0.002) and d == 0
    v, d = read(lines["servo trapdoor"][1], 5)
    assert v == pytest.approx(0.1, abs=0.002) and d == -90

    s, detail = servo_lines(rig(tmp_path / "raw"))["servo chute"]
    assert s == WARN and "OPEN-LOOP" in detail and "its feedback not calibrated" in detail
    assert ", not calibrated (hardware.feedback_at_min / feedback_at_max empty)" in detail
    assert read(detail, 3)[0] == pytest.approx(0.5, abs=0.002) and read(detail, 3)[1] is None

    reading[3] = 0.8  # the chute's pot says ~67 deg while it was parked at 0: parking faults it as a jam
    d = rig(tmp_path / "off", **calibrated, **{"hardware.move_budget_s": 0.3})  # the jam is found sooner
    lines = servo_lines(d)
    s, detail = lines["servo chute"]
    assert s == FAIL and "not the 0 deg it parks at (more than hardware.feedback_tolerance_deg = 6)" in detail
    assert abs(read(detail, 3)[1] - (-90 + (0.8 - 0.1) / 0.8 * 180)) <= 1  # 67.5 deg, to the ADC's step


def test_doctor_prints_one_line_per_servo(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[hardware]\nprofile = "chute"\npin_factory = "mock"\nservo_speed_deg_s = 3000.0\nsettle_s = 0.0\n'
                   f'[camera]\nsource = "folder"\ndevice = "{tmp_path}"\n[record]\nstate_dir = "{tmp_path / "s"}"\n')
    d = run_cli(tmp_path, "doctor", "--config", str(cfg))
    servo = [x for x in d.stdout.splitlines() if x.startswith("servo ")]
    assert [x.split()[1] for x in servo] == ["chute", "trapdoor"], d.stdout
    assert all("WARN" in x and "OPEN-LOOP" in x and "a jam cannot be seen" in x for x in servo), servo
