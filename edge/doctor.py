"""`ecosorter doctor`: each part of the bin OK, or what to do about it.

Every check returns (state, detail): OK, WARN (works, but look at it), FAIL (will not work as
configured) or SKIP (does not apply here). The board-facing checks read files under `root`
(/proc/device-tree/model, /dev/i2c-N, /sys/class/pwm, the firmware's get_throttled) and run
commands through `run_cmd`, so tests give them a fake root and canned command output.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ecosorter.edge.errors import EcoSorterError

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
# This version's release: a clock before it is a Pi without RTC that has not found network time.
RELEASED = "2026-11-29"
# bits of the firmware's get_throttled word
THROTTLE_NOW = {0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now", 3: "soft temperature limit now"}
THROTTLE_SINCE_BOOT = {16: "under-voltage", 17: "frequency capping", 18: "throttling", 19: "soft temperature limit"}

Result = tuple[str, str]


class Problem(EcoSorterError):
    """A check's finding: FAIL unless state says otherwise."""

    def __init__(self, msg: str, state: str = FAIL):
        super().__init__(msg)
        self.state = state


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    """stdout of a command, or None when it is not installed or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


class Doctor:
    def __init__(self, cfg, root: Path = Path("/"), run_cmd: Callable[[list[str]], str | None] = _run,
                 now: Callable[[], float] = time.time, broker_timeout_s: float = 5.0, open_i2c=None,
                 pin_factory=None):
        self.cfg, self.root, self.run_cmd, self.now = cfg, Path(root), run_cmd, now
        self.pins = pin_factory  # None: make_pin_factory(hardware.pin_factory)
        self.broker_timeout_s = broker_timeout_s
        self.open_i2c = open_i2c  # bus number -> smbus2-like bus; None = the real /dev/i2c-N
        self.servo_lines: list[tuple[str, str, str]] = []  # (part, state, detail) per servo, from actuator()

    # --------------------------------------------------------------------- the board
    def board(self) -> Result:
        from ecosorter.edge.hardware.sysfs_pwm import board_model

        arch = platform.machine()
        if arch in ("armv7l", "armv6l"):
            raise Problem(f"32-bit ARM ({arch}): EcoSorter Edge needs 64-bit Raspberry Pi OS (no LiteRT, numpy "
                          "or OpenCV wheels for 32-bit); reflash with Raspberry Pi OS (64-bit)")
        model = board_model(self.root)
        if not model:
            raise Problem(f"not a Raspberry Pi ({arch}, no {self.root / 'proc/device-tree/model'}): pins, PWM, I2C "
                          "and the camera are only simulated here", WARN)
        return OK, f"{model}, {arch}"

    def pin_factory(self) -> Result:
        from ecosorter.edge.hardware.pins import make_pin_factory

        hw = self.cfg.hardware
        if hw.profile == "none":
            return SKIP, "hardware.profile = 'none': no pins"
        pf = make_pin_factory(hw.pin_factory)
        name = type(pf).__name__ if pf is not None else "gpiozero default"
        servos = hw.profile in ("chute", "flaps") and hw.servo_driver == "gpiozero"
        if servos and "LGPIO" in name:
            raise Problem(f"{name}: servo pulses in software with 1% duty steps (0.2 ms, ~18 degrees on a "
                          "0.5-2.5 ms servo) and jitter; set hardware.servo_driver = \"sysfs-pwm\" "
                          "(sudo deploy/install.sh --pwm-overlay) or \"pca9685\"", WARN)
        return OK, name

    def actuator(self) -> Result:
        """Build the actuator (it parks), then read each servo's switch and feedback where it parked:
        those lines go to `servo_lines`, one per servo, printed after this one."""
        from ecosorter.edge.hardware import make_actuator

        hw = self.cfg.hardware
        with make_actuator(hw, max(hw.compartments.values()) + 1, pin_factory=self.pins) as act:
            self.servo_lines = servo_readings(act, hw)
            driver = "pca9685" if hw.profile == "pca9685" else hw.servo_driver
            servos = f", servos on {driver}" if hw.profile in ("chute", "flaps", "pca9685") else ""
            faults = [e.to_dict()["reason_en"] for e in act.machine.entries() if e.condition.kind == "fault"]
            if faults:
                raise Problem(f"profile {act.profile}{servos}; built, but parking stopped: {'; '.join(faults)}; "
                              "servos detached where they stand (see the servo lines)")
            return OK, f"profile {act.profile}{servos}; built and left safe"

    def sensors(self) -> Result:
        """The lid switch and fill sensors as they read now: a person can fix these before a run."""
        import gpiozero

        from ecosorter.edge.hardware.pins import make_pin_factory

        hw = self.cfg.hardware
        if hw.profile == "none" or (hw.interlock_pin < 0 and not hw.full_sensor_pins):
            return SKIP, "no lid switch or fill sensors configured (hardware.interlock_pin, full_sensor_pins)"
        pf = self.pins if self.pins is not None else make_pin_factory(hw.pin_factory)
        opened, seen, problems = [], [], []
        try:
            if hw.interlock_pin >= 0:  # pull-up; closed lid = switch closed to GND = pressed
                lid = gpiozero.Button(hw.interlock_pin, pull_up=True, pin_factory=pf)
                opened.append(lid)
                if lid.is_active:
                    seen.append(f"lid closed (GPIO{hw.interlock_pin})")
                else:
                    problems.append(f"lid open now (hardware.interlock_pin = {hw.interlock_pin}): nothing moves until "
                                    "it is closed; if it is closed, check the switch and its wire to GND")
            for c, pin in sorted(hw.full_sensor_pins.items()):
                b = gpiozero.Button(pin, pull_up=True, pin_factory=pf)
                opened.append(b)
                if b.is_active:
                    problems.append(f"compartment {c} reads full now (hardware.full_sensor_pins.{c} = {pin}): empty it, "
                                    "or check the sensor")
                else:
                    seen.append(f"compartment {c} not full")
        finally:
            for d in opened:
                d.close()
        if problems:
            raise Problem("; ".join(problems), WARN)
        return OK, ", ".join(seen)

    def budget(self) -> Result:
        """The longest single move (config validation already refuses one over the budget)."""
        from ecosorter.edge.hardware.check import longest_move_s, servo_angles

        hw = self.cfg.hardware
        if not servo_angles(hw):
            return SKIP, f"profile {hw.profile}: no servo moves"
        need = longest_move_s(hw)
        how = (f"{hw.servo_max_angle - hw.servo_min_angle:g} deg at {hw.servo_speed_deg_s:g} deg/s "
               f"+ settle {hw.settle_s:g} s")
        if need > hw.move_budget_s:
            raise Problem(f"the longest move takes {need:.2f} s ({how}) but hardware.move_budget_s = "
                          f"{hw.move_budget_s:g}: such moves fault; raise move_budget_s or check servo_speed_deg_s")
        if need > 0.9 * hw.move_budget_s:
            raise Problem(f"the longest move takes {need:.2f} s ({how}), within 10% of hardware.move_budget_s = "
                          f"{hw.move_budget_s:g}: a servo slower than its rating will fault; leave more margin", WARN)
        return OK, f"longest move {need:.2f} s ({how}) within move_budget_s = {hw.move_budget_s:g}"

    def pwm(self) -> Result:
        from ecosorter.edge.hardware import sysfs_pwm
        from ecosorter.edge.hardware.pins import used_pins

        hw = self.cfg.hardware
        if hw.servo_driver != "sysfs-pwm" or hw.profile not in ("chute", "flaps"):
            return SKIP, f"servo_driver = {hw.servo_driver!r}: no sysfs PWM needed"
        sysfs = self.root / "sys/class/pwm"
        chip = sysfs_pwm.find_chip(hw.pwm_chip, sysfs)
        npwm = int((chip / "npwm").read_text())
        table = ({int(p): c for p, c in hw.pwm_channels.items()} if hw.pwm_channels
                 else sysfs_pwm.default_channels(sysfs_pwm.board_model(self.root)))
        where = []
        for key, pin, _ in used_pins(hw, servo_pins_only=True):
            if pin not in table:
                raise Problem(f"{key} = {pin}: no PWM channel on this board (PWM pins: {sorted(table)})")
            if table[pin] >= npwm:
                raise Problem(f"{key} = {pin} needs channel {table[pin]} but {chip.name} has {npwm}; is "
                              f"'{sysfs_pwm.OVERLAY}' in /boot/firmware/config.txt?")
            where.append(f"GPIO{pin} -> {chip.name}/pwm{table[pin]}")
        return OK, f"{', '.join(where)} ({npwm} channels)"

    def i2c(self, probe: bool = True) -> Result:
        hw = self.cfg.hardware
        if "pca9685" not in (hw.profile, hw.servo_driver) or hw.profile in ("none", "leds"):
            return SKIP, "no I2C device configured"
        dev = self.root / f"dev/i2c-{hw.i2c_bus}"
        if not dev.exists():
            raise Problem(f"hardware.i2c_bus = {hw.i2c_bus}: {dev} is missing; enable I2C (sudo deploy/install.sh "
                          "--pca9685, or raspi-config > Interface Options > I2C) and reboot")
        if not probe:
            return OK, f"{dev} present"
        from ecosorter.edge.hardware.pca9685 import MODE1, open_bus

        bus = (self.open_i2c or open_bus)(hw.i2c_bus)
        try:
            mode1 = bus.read_byte_data(hw.pca9685_address, MODE1)
        except OSError as e:
            raise Problem(f"hardware.pca9685_address = {hw.pca9685_address:#04x}: nothing answers on {dev} ({e}); "
                          "check SDA/SCL/power and `i2cdetect -y 1`") from None
        finally:
            bus.close()
        return OK, f"PCA9685 at {hw.pca9685_address:#04x} on {dev} (MODE1 {mode1:#04x})"

    def camera_present(self) -> Result:
        cam = self.cfg.camera
        if cam.source == "picamera2":
            try:
                from picamera2 import Picamera2
            except ImportError:
                raise Problem("camera.source = 'picamera2' needs python3-picamera2 (sudo apt install "
                              "python3-picamera2; a venv with --system-site-packages)") from None
            cams = Picamera2.global_camera_info()
            if not cams:
                raise Problem("libcamera lists no camera: check the ribbon cable (contacts toward the board), "
                              "then `rpicam-hello --list-cameras`")
            return OK, ", ".join(c.get("Model", "?") for c in cams)
        if cam.source == "opencv" and cam.device.isdigit():
            dev = self.root / f"dev/video{cam.device}"
            if not dev.exists():
                found = sorted(p.name for p in (self.root / "dev").glob("video*"))
                raise Problem(f"camera.device = {cam.device!r}: {dev} is missing (video devices here: "
                              f"{', '.join(found) or 'none'}); plug the USB camera in or fix camera.device")
            return OK, str(dev)
        if cam.source in ("folder", "video"):
            path = Path(cam.device)
            if not path.exists():
                raise Problem(f"camera.device = {cam.device!r} does not exist")
            return OK, f"{cam.source}: {path}"
        return OK, f"{cam.source} {cam.device}"

    # ------------------------------------------------------------------- the network
    def broker(self) -> Result:
        m = self.cfg.mqtt
        if not m.enabled:
            return SKIP, "mqtt.enabled = false"
        import ssl
        import threading

        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ecosorter-{self.cfg.bin_id}-doctor")
        if m.username:
            c.username_pw_set(m.username, m.password or None)
        if m.tls:
            c.tls_set(ca_certs=m.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        answered, result = threading.Event(), {}

        def on_connect(client, userdata, flags, reason_code, properties):
            result["rc"] = reason_code
            answered.set()

        c.on_connect = on_connect
        where = f"mqtt {m.host}:{m.port}"
        try:
            c.connect(m.host, m.port, keepalive=10)
        except (OSError, ssl.SSLError) as e:
            raise Problem(f"{where}: cannot connect ({e}); check mqtt.host, mqtt.port, the network, mqtt.tls") from None
        c.loop_start()
        try:
            if not answered.wait(self.broker_timeout_s):
                raise Problem(f"{where}: no CONNACK in {self.broker_timeout_s:g} s (a firewall, or not an MQTT port?)")
            rc = result["rc"]
            if rc.is_failure:
                hint = " check mqtt.username / mqtt.password" if "authori" in str(rc).lower() or "password" in str(rc).lower() else ""
                raise Problem(f"{where}: the broker refused: {rc};{hint or ' see the broker log'}")
            return OK, f"{where} accepts {'user ' + repr(m.username) if m.username else 'anonymous'} login"
        finally:
            c.disconnect()
            c.loop_stop()

    # --------------------------------------------------------------------- the system
    def disk(self) -> Result:
        state = Path(self.cfg.record.state_dir)
        probe = state if state.exists() else state.parent
        free_mb = shutil.disk_usage(probe).free / 1e6
        if not os.access(probe, os.W_OK):
            raise Problem(f"{state} is not writable by this user (run deploy/install.sh or set record.state_dir)")
        if free_mb < 500:
            raise Problem(f"only {free_mb:.0f} MB free under {probe}")
        quota = self.cfg.record.capture_quota_mb
        if self.cfg.record.capture != "none" and quota > free_mb - 200:
            raise Problem(f"record.capture_quota_mb = {quota:g} but only {free_mb:.0f} MB are free under {probe}: "
                          "photos would fill the disk; lower the quota", WARN)
        return OK, f"{state}: {free_mb / 1000:.1f} GB free, photo quota {quota:g} MB"

    def clock(self) -> Result:
        import datetime as dt

        now = self.now()
        released = dt.datetime.fromisoformat(RELEASED).replace(tzinfo=dt.timezone.utc)
        when = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if now < released.timestamp():
            raise Problem(f"the clock says {when}, before this software was released ({RELEASED}): no RTC and no "
                          "network time yet; event times and `--since` are wrong until it syncs (network, or an RTC)")
        sync = self.run_cmd(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
        if sync is None:
            return OK, f"{when} (timedatectl not available: NTP state unknown)"
        if sync.strip() != "yes":
            raise Problem(f"{when}, not synchronised by NTP yet: the clock may jump when it syncs "
                          "(a Pi has no RTC); check the network or `timedatectl timesync-status`", WARN)
        return OK, f"{when}, NTP synchronised"

    def power(self) -> Result:
        out = self.run_cmd(["vcgencmd", "get_throttled"])
        if out and "=" in out:
            text, source = out.split("=", 1)[1].strip(), "vcgencmd get_throttled"
        else:
            path = self.root / "sys/devices/platform/soc/soc:firmware/get_throttled"
            try:
                text, source = path.read_text().strip(), str(path)
            except OSError:
                return SKIP, "no Raspberry Pi firmware here (vcgencmd, get_throttled)"
        try:
            word = int(text, 16)
        except ValueError:
            raise Problem(f"{source} gave {text!r}, not a hex number", WARN) from None
        now = [v for b, v in THROTTLE_NOW.items() if word >> b & 1]
        since = [v for b, v in THROTTLE_SINCE_BOOT.items() if word >> b & 1]
        supply = "use the official 5 V 5 A (Pi 5) / 3 A (Pi 4) supply and power servos from their own 5 V supply"
        if now:
            raise Problem(f"{', '.join(now)} ({source} {word:#x}): {supply}")
        if since:
            raise Problem(f"since boot: {', '.join(since)} ({source} {word:#x}): a brown-out under load "
                          f"(servos?); {supply}", WARN)
        return OK, f"no under-voltage or throttling since boot ({word:#x})"


# the config key of each axis's position switch (flaps have none)
SWITCH_KEYS = {"chute": "hardware.chute_home_switch_pin", "trapdoor": "hardware.trapdoor_closed_switch_pin"}
SWITCH_MEANS = {"chute": "at home", "trapdoor": "shut"}
SERVO_ORDER = {"chute": 0, "trapdoor": 1}  # as hardware.feedback_channels lists them


def servo_readings(act, hw) -> list[tuple[str, str, str]]:
    """One line per servo, read where parking left it: its position switch and position feedback
    and what each reads now, or plainly that it is open-loop (nothing would see a jam)."""
    if not act.axes:
        return [("servos", SKIP, f"profile {hw.profile}: no servos")]
    parked = act.parked()
    faults = [e for e in act.machine.entries() if e.condition.kind == "fault"]
    parks = {"chute": getattr(act, "home", None), "trapdoor": getattr(act, "door_closed", None)}
    lines = []
    for axis in sorted(act.axes, key=lambda a: SERVO_ORDER.get(a.name, 0)):  # config order; flaps as built
        state, said = OK, []
        key = SWITCH_KEYS.get(axis.name)
        jammed = any(e.detail.startswith(f"{axis.name} ") for e in faults)  # parking found this one stuck
        park = parks.get(axis.name, getattr(act, "closed_angle", None))  # where parking sends it
        if axis.switch is not None:
            closed = bool(axis.switch.is_active)
            reads = f"position switch {axis.switch.pin} ({key}) reads {'closed' if closed else 'open'}"
            if (parked or jammed) and not closed:  # sent to the switch's angle (the park position) and timed there
                state = FAIL
                said.append(f"{reads}, not {SWITCH_MEANS[axis.name]} ({axis.switch_angle:g} deg) after parking: "
                            "jammed, or check the switch and its wire to GND")
            else:
                said.append(reads + (f": {SWITCH_MEANS[axis.name]}" if closed else ""))
        if axis.feedback is not None:
            value = float(axis.feedback.value)
            where = f"position feedback mcp3008 channel {axis.feedback.channel} reads {value:.3f}"
            deg = axis.position()
            if deg is None:
                state = WARN if state == OK else state  # a FAIL stays
                said.append(f"{where}, not calibrated (hardware.feedback_at_min / feedback_at_max empty): not used, "
                            "run `ecosorter calibrate`")
            elif (parked or jammed) and park is not None and abs(deg - park) > axis.tolerance_deg:
                state = FAIL
                said.append(f"{where} = {deg:.0f} deg, not the {park:g} deg it parks at (more than "
                            f"hardware.feedback_tolerance_deg = {hw.feedback_tolerance_deg:g}): jammed or miswired")
            else:
                said.append(f"{where} = {deg:.0f} deg")
        closed_loop = axis.switch is not None or axis.position() is not None
        if not closed_loop:
            state = WARN if state == OK else state  # a FAIL stays
            why = [f"no position switch ({key} = -1)" if key else "no position switch (flaps have none)",
                   "no position feedback (hardware.feedback_adc = 'none')" if axis.feedback is None else
                   "its feedback not calibrated"]
            said.insert(0, f"OPEN-LOOP: {' and '.join(why)}: a jam cannot be seen; each move is assumed to "
                           "arrive after its travel time")
        elif axis.switch is not None and axis.position() is None:
            said.append(f"a jam is seen only leaving or reaching {axis.switch_angle:g} deg; other angles are "
                        "assumed (no calibrated position feedback)")
        if jammed:
            state = FAIL
        elif not parked:
            said.append("parking stopped (lid open or a fault, see the pins line): read where it stands")
        lines.append((f"servo {axis.name}", state, "; ".join(said)))
    return lines


def run_doctor(args, root: Path = Path("/")) -> int:
    from ecosorter.edge.backends import available_runtimes
    from ecosorter.edge.config import DEFAULT_PATH, load_config

    results: list[tuple[str, str, str]] = []

    def check(part: str, fn) -> object:
        try:
            out = fn()
        except Problem as e:
            results.append((part, e.state, str(e)))
            return None
        except Exception as e:  # doctor reports everything, whatever it is
            msg = str(e) if isinstance(e, EcoSorterError) else f"{type(e).__name__}: {e}"
            results.append((part, FAIL, msg))
            return None
        state, detail = out if isinstance(out, tuple) else (OK, str(out))
        results.append((part, state, detail))
        return detail

    path = args.config or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    cfg = check("config", lambda: load_config(path) and f"{path or 'defaults (no config file)'} is valid")
    if cfg is None:  # the other parts are still worth checking: with the defaults, and saying so
        part, state, detail = results[-1]
        results[-1] = (part, state, f"{detail} (the lines below check the defaults)")
    cfg = load_config(path) if cfg else load_config(None)
    doc = Doctor(cfg, root)
    check("board", doc.board)
    runtimes = available_runtimes()
    usable = {k: v for k, v in runtimes.items() if not v.startswith("unavailable")}
    check("backend", lambda: ", ".join(f"{k} {v}" for k, v in usable.items()) if usable else
          _fail("no TFLite runtime: pip install ai-edge-litert (" + "; ".join(runtimes.values()) + ")"))

    def model():
        from ecosorter.edge.model import load_model
        from ecosorter.edge.sorter import default_model_path

        # the model `run` would load: model.path, else the installed one, else the bundled demo
        installed = default_model_path(Path(cfg.record.state_dir))
        path = cfg.model.path or installed
        which = "model.path" if cfg.model.path else "installed" if installed else "the bundled demo"
        with load_model(path, cfg.model.backend) as m:
            return f"{m.path} ({which}; {m.size_bytes / 1e6:.1f} MB, {len(m.labels)} labels, {m.classifier.runtime})"

    check("model", model)
    check("camera", doc.camera_present)
    if results[-1][1] == OK:
        check("camera frame", lambda: _camera_frame(cfg))
    check("pin factory", doc.pin_factory)
    check("pwm", doc.pwm)
    check("i2c", doc.i2c)
    if results[-3][1] != FAIL and results[-2][1] != FAIL and results[-1][1] != FAIL:
        check("pins", doc.actuator)
        results.extend(doc.servo_lines)
        check("sensors", doc.sensors)
    check("budget", doc.budget)
    check("broker", doc.broker)
    check("disk", doc.disk)
    check("clock", doc.clock)
    check("power", doc.power)
    width = max(len(p) for p, _, _ in results)
    for part, state, detail in results:
        print(f"{part:<{width}}  {state:<4}  {detail}")
    return 1 if any(state == FAIL for _, state, _ in results) else 0


def _camera_frame(cfg) -> str:
    from ecosorter.edge.sources import open_source

    src = open_source(cfg.camera)
    src.open()
    try:
        frame = src.read()
        if frame is None:
            _fail(f"{src.name} opened but gave no frame")
        return f"{src.name}: {frame.pixels.shape[1]}x{frame.pixels.shape[0]}"
    finally:
        src.close()


def _fail(msg: str):
    raise EcoSorterError(msg)
