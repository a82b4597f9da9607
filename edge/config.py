"""One TOML file, validated up front: every error names the key and what is allowed.

Each section is a dataclass; its field types and `allowed` / `min` / `max` metadata are the
schema, so the defaults, the validation and the documentation cannot drift apart.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ecosorter.edge.errors import ConfigError, ConfigErrors

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/ecosorter/config.toml")
LABELS = ("kaca", "kardus", "kertas", "khusus", "logam", "organik", "plastik")


def opt(default: Any = MISSING, *, allowed: tuple | None = None, min: float | None = None,
        max: float | None = None, doc: str = "", factory: Any = MISSING) -> Any:
    meta = {"allowed": allowed, "min": min, "max": max, "doc": doc}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    path: str = opt("", doc="the .tflite; empty = the installed model (record.state_dir/models/current.tflite), else the bundled demo")
    backend: str = opt("auto", allowed=("auto", "litert", "tflite-runtime", "tensorflow"))
    num_threads: int = opt(0, min=0, max=64, doc="0 = one per CPU core")
    labels_file: str = opt("", doc="foreign .tflite only: one label per line")
    preprocess: str = opt("", allowed=("", "caffe", "tf", "unit", "raw"), doc="foreign .tflite only")
    public_key: str = opt("", doc="base64 ed25519 key (ecosorter keys new): installed models must be signed with "
                                  "it or a public_keys one; no key = installs refused unless --allow-unsigned")
    public_keys: list[str] = opt(factory=list, doc="more base64 ed25519 keys trusted beside public_key, for models and "
                                                   "remote commands alike (key rotation)")
    allow_unverified: bool = opt(False, doc="run and install models whose conversion failed its gate "
                                            "(ecosorter-convert --force: verified = false); shown on the page")
    download_hosts: list[str] = opt(factory=list, doc="hosts (host or host:port) remote installs may download "
                                                      "from; empty = URL installs off")
    allow_http: bool = opt(False, doc="also allow plain http:// downloads (the sha256 is still checked)")
    max_download_mb: float = opt(200.0, min=0.1, max=4096, doc="a download larger than this is refused")
    download_timeout_s: float = opt(300.0, min=1, max=3600, doc="a download taking longer than this, in all, is refused")
    incoming_quota_mb: float = opt(600.0, min=1, max=16384, doc="models/incoming/ may hold at most this")


@dataclass(frozen=True)
class CameraConfig:
    source: str = opt("picamera2", allowed=("picamera2", "opencv", "folder", "video"))
    device: str = opt("0", doc="opencv: index or URL; folder: a folder of images; video: a file")
    width: int = opt(640, min=32, max=8192)
    height: int = opt(480, min=32, max=8192)
    fps: float = opt(15.0, min=0.1, max=120)
    loop: bool = opt(False, doc="folder/video: start again at the end")
    realtime: bool = opt(False, doc="folder: pace the photos at camera.fps, like a camera")
    roi: list[float] = opt(factory=lambda: [0.0, 0.0, 1.0, 1.0], doc="tray region x, y, w, h (fractions)")
    stall_timeout_s: float = opt(3.0, min=0.2, max=600, doc="no new frame for this long = camera stalled")
    reopen_backoff_max_s: float = opt(30.0, min=0.1, max=3600)
    # The folder simulator shows each photo for item_frames, then an empty tray for empty_frames.
    item_frames: int = opt(6, min=1, max=100)
    empty_frames: int = opt(3, min=0, max=100)


@dataclass(frozen=True)
class TriggerConfig:
    mode: str = opt("vision", allowed=("vision", "sensor", "always"))
    change_threshold: float = opt(12.0, min=0.5, max=255, doc="mean |diff| vs the empty tray = item present")
    still_threshold: float = opt(4.0, min=0.1, max=255, doc="mean |diff| between frames below this = still")
    still_frames: int = opt(2, min=1, max=100)
    empty_learn_frames: int = opt(3, min=1, max=100)
    dark_below: float = opt(25.0, min=0.0, max=255, doc="camera alert: mean brightness below this")
    blur_below: float = opt(50.0, min=0.0, doc="camera alert: item-frame sharpness (Laplacian variance) below this")


@dataclass(frozen=True)
class DecisionConfig:
    frames: int = opt(3, min=1, max=30, doc="frames averaged when the first is not confident")
    early_confidence: float = opt(0.90, min=0.0, max=1.0, doc="decide on one frame at or above this (and at or above its class's threshold)")
    threshold: float = opt(0.55, min=0.0, max=1.0, doc="below it the item is uncertain")
    class_thresholds: dict[str, float] = opt(factory=dict, doc="per-class thresholds, e.g. kaca = 0.7; "
                                             "they override the model's for those classes")
    model_thresholds: bool = opt(True, doc="use the calibrated per-class thresholds a model carries "
                                           "(ecosorter-convert --contamination); false = threshold and "
                                           "class_thresholds only")
    contamination_budget: float = opt(0.0, min=0.0, max=1.0,
                                      doc="share of items allowed confidently into a wrong compartment: 0 = the "
                                          "budget the model's thresholds were chosen for; else the largest "
                                          "of the model's certified budgets at or below it (docs/training.md)")
    fallback: str = opt("khusus", doc="label whose compartment takes uncertain items")


@dataclass(frozen=True)
class HardwareConfig:
    profile: str = opt("leds", allowed=("none", "leds", "chute", "flaps", "pca9685"))
    pin_factory: str = opt("", allowed=("", "mock", "lgpio", "pigpio", "rpigpio", "native"),
                           doc="empty = gpiozero's default for the board")
    compartments: dict[str, int] = opt(factory=lambda: {lb: i for i, lb in enumerate(LABELS)},
                                       doc="label -> compartment number")
    compartment_names: list[str] = opt(factory=list, doc="names printed on the compartments, in order "
                                       "(compartment 0, 1, ...), shown on the page; [] = numbered 1, 2, ...")
    led_pins: list[int] = opt(factory=lambda: [5, 6, 13, 19, 26, 16, 20], doc="leds: one per compartment")
    buzzer_pin: int = opt(-1, min=-1, max=27, doc="-1 = none")
    led_on_s: float = opt(3.0, min=0.0, max=60)
    status_led_pins: list[int] = opt(factory=list, doc="RGB status LED (r, g, b), or [] for none")
    chute_pin: int = opt(12, min=0, max=27)
    chute_angles: list[float] = opt(factory=lambda: [-90.0, -60.0, -30.0, 0.0, 30.0, 60.0, 90.0])
    chute_home_angle: float = opt(0.0, min=-180, max=180)
    trapdoor_pin: int = opt(13, min=0, max=27)
    trapdoor_closed_angle: float = opt(-90.0, min=-180, max=180)
    trapdoor_open_angle: float = opt(0.0, min=-180, max=180)
    flap_pins: list[int] = opt(factory=lambda: [5, 6, 12, 13, 19, 26, 16])
    flap_closed_angle: float = opt(-90.0, min=-180, max=180)
    flap_open_angle: float = opt(0.0, min=-180, max=180)
    pca9685_channels: list[int] = opt(factory=lambda: [0, 1], doc="pca9685: channels in servo order (chute, trapdoor; or flap 0, 1, ...)")
    pca9685_address: int = opt(0x40, min=0, max=127)
    servo_driver: str = opt("gpiozero", allowed=("gpiozero", "sysfs-pwm", "pca9685"),
                            doc="how servo pulses are made: gpiozero (pin factory; software PWM on a Pi 5), "
                                "sysfs-pwm (kernel hardware PWM, dtoverlay=pwm-2chan), pca9685 (I2C board)")
    pwm_chip: int = opt(-1, min=-1, max=63, doc="sysfs-pwm: /sys/class/pwm/pwmchipN; -1 = the first with 2+ channels")
    pwm_channels: dict[str, int] = opt(factory=dict, doc="sysfs-pwm: BCM pin -> PWM channel; {} = the board's "
                                       "(Pi 4: 12, 18 -> 0, 13, 19 -> 1; Pi 5: 12 -> 0, 13 -> 1, 18 -> 2, 19 -> 3)")
    i2c_bus: int = opt(1, min=0, max=31, doc="pca9685: /dev/i2c-N")
    min_pulse_width_ms: float = opt(0.5, min=0.1, max=3.0)
    max_pulse_width_ms: float = opt(2.5, min=0.5, max=5.0)
    servo_min_angle: float = opt(-90.0, min=-180, max=180, doc="the servos' angle at min_pulse_width_ms")
    servo_max_angle: float = opt(90.0, min=-180, max=180, doc="the servos' angle at max_pulse_width_ms")
    servo_speed_deg_s: float = opt(300.0, min=10, max=3000,
                                   doc="travel speed under load: SG90/MG90S ~500-600, MG996R ~300-400, "
                                       "DS3218 ~400; measure yours (docs/simulate.md); lower = safer")
    settle_s: float = opt(0.35, min=0.0, max=10, doc="extra wait after the computed travel time")
    drop_s: float = opt(0.6, min=0.0, max=10)
    move_budget_s: float = opt(2.0, min=0.05, max=60, doc="one move (travel + settle) slower than this is a fault")
    chute_home_switch_pin: int = opt(-1, min=-1, max=27, doc="closed = chute at home; -1 = none (jams go unseen)")
    trapdoor_closed_switch_pin: int = opt(-1, min=-1, max=27, doc="closed = trapdoor shut; -1 = none")
    interlock_pin: int = opt(-1, min=-1, max=27, doc="lid switch; -1 = none")
    interlock_resume: str = opt("auto", allowed=("auto", "button"),
                                doc="after the lid closes: resume by itself after resume_delay_s, or only "
                                    "after a press of the wrong/clear button (ISO 14119)")
    resume_delay_s: float = opt(2.0, min=0.0, max=600)
    clear_hold_s: float = opt(3.0, min=0.5, max=30, doc="hold the wrong/clear button this long to clear a fault")
    item_sensor_pin: int = opt(-1, min=-1, max=27, doc="for trigger.mode = sensor: beam/PIR input, or ultrasonic echo")
    item_sensor_kind: str = opt("beam", allowed=("beam", "pir", "ultrasonic"))
    item_sensor_trigger_pin: int = opt(-1, min=-1, max=27, doc="ultrasonic: the trigger pin")
    item_sensor_distance_m: float = opt(0.15, min=0.02, max=4.0, doc="ultrasonic: an item is closer than this")
    full_sensor_pins: dict[str, int] = opt(factory=dict, doc="compartment -> fill-level input pin")
    full_confirm_s: float = opt(2.0, min=0.0, max=600, doc="a fill sensor must read full (or empty) this long "
                                                              "before it counts: items falling past a beam flicker it")
    when_full: str = opt("fallback", allowed=("fallback", "pause"),
                         doc="fallback: items for a full compartment go to the fallback's (if it has room); "
                             "pause: they wait on the tray. Either way other items keep sorting")
    feedback_adc: str = opt("none", allowed=("none", "mcp3008"),
                            doc="position feedback from analog-feedback servos: an MCP3008 on SPI0 (GPIO 8-11) "
                                "reads each servo's potentiometer; the door opens only once the chute is read "
                                "within feedback_tolerance_deg of its compartment (none: arrival is assumed)")
    feedback_channels: list[int] = opt(factory=lambda: [0, 1], doc="mcp3008 channel per servo, in servo order "
                                                                   "(chute, trapdoor; or flap 0, 1, ...)")
    feedback_at_min: list[float] = opt(factory=list, doc="per servo: the ADC reading (0-1) at servo_min_angle; "
                                                         "measured by `ecosorter calibrate`")
    feedback_at_max: list[float] = opt(factory=list, doc="per servo: the ADC reading (0-1) at servo_max_angle; "
                                                         "measured by `ecosorter calibrate`")
    feedback_tolerance_deg: float = opt(6.0, min=0.5, max=45, doc="a servo read further than this from its "
                                        "target when its move budget is spent is a jam")
    wrong_button_pin: int = opt(-1, min=-1, max=27, doc='"wrong?" button; -1 = none')
    power_fail_pin: int = opt(-1, min=-1, max=27, doc="UPS HAT low-power signal; -1 = none")


@dataclass(frozen=True)
class RecordConfig:
    state_dir: str = opt("/var/lib/ecosorter")
    capture: str = opt("uncertain", allowed=("none", "uncertain", "all"))
    capture_confident_fraction: float = opt(0.05, min=0.0, max=1.0)
    capture_quota_mb: float = opt(2048.0, min=0.1)
    disk_reserve_mb: float = opt(8.0, min=0.0, max=1024, doc="pre-allocated file released when the disk fills, "
                                                             "so pending events can still be written; 0 = none")
    log_check_s: float = opt(600.0, min=0.0, max=86400.0, doc="every this many seconds the open event log is "
                             "checked (PRAGMA quick_check) for damage written in place; 0 = off, else at least "
                             "10 (each check reads the whole file)")


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = opt(False)
    host: str = opt("localhost")
    port: int = opt(1883, min=1, max=65535)
    username: str = opt("")
    password: str = opt("", doc="better: password_file or systemd LoadCredential=mqtt_password (this file is readable)")
    password_file: str = opt("", doc="a file (mode 0600 or 0400) holding the MQTT password")
    tls: bool = opt(False)
    ca_file: str = opt("")
    topic_prefix: str = opt("ecosorter")
    keepalive_s: int = opt(30, min=5, max=3600)
    home_assistant: bool = opt(True)


@dataclass(frozen=True)
class CommandsConfig:
    trust_broker_for: list[str] = opt(factory=list, doc="actions accepted unsigned, trusting the broker's ACLs "
                                                        "(only clear_fault, flag, label), e.g. for Home Assistant")
    clock_window_s: float = opt(300.0, min=5, max=86400, doc="a signed command older or newer than this is stale")
    rate_per_minute: float = opt(30.0, min=1, max=6000, doc="commands accepted per minute; more are dropped")
    queue_size: int = opt(16, min=1, max=1000, doc="commands waiting for the worker; more are dropped")


@dataclass(frozen=True)
class StatusConfig:
    enabled: bool = opt(True)
    bind: str = opt("127.0.0.1", doc="0.0.0.0 to show the page to other machines")
    token_file: str = opt("", doc="a file (mode 0600) holding the page token that remote browsers type once to "
                                  "flag, label or clear faults (or systemd LoadCredential=page_token); empty = a "
                                  "new random token each start, known only to the kiosk's own screen")
    port: int = opt(8080, min=0, max=65535)
    public_read: bool = opt(False, doc="with a non-loopback bind: let anyone on the network read /api/status, "
                                       "/metrics and photos; false = they need the page token (header "
                                       "X-EcoSorter-Token or Authorization: Bearer); the kiosk on loopback needs none")


@dataclass(frozen=True)
class Config:
    bin_id: str = opt("ecosorter-1", doc="this bin's name in its MQTT topics and client id, `fleet status` and "
                      "exports: one per bin (two bins with one bin_id on a broker take each other's connection "
                      "over, every second)")
    model: ModelConfig = opt(factory=ModelConfig)
    camera: CameraConfig = opt(factory=CameraConfig)
    trigger: TriggerConfig = opt(factory=TriggerConfig)
    decision: DecisionConfig = opt(factory=DecisionConfig)
    hardware: HardwareConfig = opt(factory=HardwareConfig)
    record: RecordConfig = opt(factory=RecordConfig)
    mqtt: MqttConfig = opt(factory=MqttConfig)
    commands: CommandsConfig = opt(factory=CommandsConfig)
    status: StatusConfig = opt(factory=StatusConfig)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                errors: list[ConfigError] | None = None) -> Config:
    """Read and validate; ConfigError names the key (or the file) at fault. `errors`: see config_from_dict."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(p), "file not found (`ecosorter config example > FILE` writes one with every key)") from None
        except UnicodeDecodeError as e:
            raise ConfigError(str(p), f"not UTF-8 text: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(str(p), f"not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(str(p), f"cannot read: {e.strerror or e}") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return config_from_dict(data, errors)


def config_from_dict(data: dict[str, Any], errors: list[ConfigError] | None = None) -> Config:
    """Validate parsed TOML; every problem is reported at once (ConfigErrors), each naming its key:
    the schema's, the rules between keys and the machine's, in one report. With `errors` given,
    problems are appended there and a best-effort config (defaults where a value was bad) returned."""
    found: list[ConfigError] = []
    cfg = _build(Config, data, "", found)
    bad = {e.key for e in found}
    if "hardware.profile" not in bad:  # rules for the wrong profile would only add noise
        more: list[ConfigError] = []
        _collect(more, _cross_check, cfg)
        from ecosorter.edge.hardware.check import machine_errors  # the hardware rules live with the hardware

        more += machine_errors(cfg)
        found += [e for e in more if e.key not in bad]  # a bad value's default must not be blamed too
    if errors is not None:
        errors.extend(found)
    elif found:
        raise ConfigErrors(found)
    return cfg


def _collect(errors: list[ConfigError], fn, *args) -> None:
    try:
        fn(*args)
    except ConfigErrors as e:
        errors.extend(e.errors)
    except ConfigError as e:
        errors.append(e)


def _build(cls: type, data: Any, prefix: str, errors: list[ConfigError]) -> Any:
    if not isinstance(data, dict):
        errors.append(ConfigError(prefix or "<root>", f"must be a table, got {type(data).__name__}"))
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {_join(prefix, near[0])!r}?" if near else f"; allowed: {', '.join(names)}"
            errors.append(ConfigError(_join(prefix, key), f"unknown key{hint}"))
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        key, tp = _join(prefix, f.name), hints[f.name]
        if is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], key, errors)
            continue
        try:
            kwargs[f.name] = _check(key, data[f.name], tp, f.metadata)
        except ConfigError as e:
            errors.append(e)
    return cls(**kwargs)


def _check(key: str, value: Any, tp: Any, meta: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (list,):
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list of {item.__name__}, got {value!r}")
        return [_scalar(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (dict,):
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table of {item.__name__}, got {value!r}")
        return {str(k): _scalar(f"{key}.{k}", v, item) for k, v in value.items()}
    if isinstance(origin, type) and origin is types.UnionType:  # pragma: no cover
        return value
    v = _scalar(key, value, tp)
    allowed, lo, hi = meta.get("allowed"), meta.get("min"), meta.get("max")
    if allowed is not None and v not in allowed:
        near = difflib.get_close_matches(str(v), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(key, f"{v!r} is not allowed{hint}; allowed: {', '.join(repr(a) for a in allowed)}")
    if lo is not None and v < lo:
        raise ConfigError(key, f"{v!r} is below the minimum {lo}")
    if hi is not None and v > hi:
        raise ConfigError(key, f"{v!r} is above the maximum {hi}")
    return v


def _scalar(key: str, value: Any, tp: type) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(key, f"must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is float and value != value:  # NaN
        raise ConfigError(key, "must be a number, got nan")
    return value


def _type_name(tp: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, tp.__name__)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _cross_check(cfg: Config) -> None:
    """Rules between keys that stop at the first problem (each raises ConfigError)."""
    roi = cfg.camera.roi
    if len(roi) != 4 or not all(0.0 <= v <= 1.0 for v in roi) or roi[2] <= 0 or roi[3] <= 0 \
            or roi[0] + roi[2] > 1.0 + 1e-9 or roi[1] + roi[3] > 1.0 + 1e-9:
        raise ConfigError("camera.roi", f"{roi} must be [x, y, w, h] fractions inside the frame, w and h > 0")
    for label, t in cfg.decision.class_thresholds.items():
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"decision.class_thresholds.{label}", f"{t} must be between 0 and 1")
    for label, c in cfg.hardware.compartments.items():
        if c < 0:
            raise ConfigError(f"hardware.compartments.{label}", f"{c} must be >= 0")
    if cfg.hardware.min_pulse_width_ms >= cfg.hardware.max_pulse_width_ms:
        raise ConfigError("hardware.min_pulse_width_ms", "must be below hardware.max_pulse_width_ms")
    if cfg.trigger.mode == "sensor" and cfg.hardware.item_sensor_pin < 0:
        raise ConfigError("trigger.mode", "'sensor' needs hardware.item_sensor_pin")
    for pin, ch in cfg.hardware.pwm_channels.items():
        if not pin.isdigit() or int(pin) > 27 or not 0 <= ch <= 15:
            raise ConfigError(f"hardware.pwm_channels.{pin}", f"must map a BCM pin 0-27 to a PWM channel 0-15, got {pin} = {ch}")
    if len(set(cfg.hardware.pca9685_channels)) != len(cfg.hardware.pca9685_channels) \
            or not all(0 <= ch <= 15 for ch in cfg.hardware.pca9685_channels):
        raise ConfigError("hardware.pca9685_channels", f"{cfg.hardware.pca9685_channels} must be distinct channels 0-15")
    if 0 < cfg.record.log_check_s < 10:
        raise ConfigError("record.log_check_s", f"{cfg.record.log_check_s!r} must be 0 (off) or at least 10: "
                                                "each check reads the whole event log")
    if cfg.camera.source in ("folder", "video") and not cfg.camera.device:
        raise ConfigError("camera.device", f"camera.source = {cfg.camera.source!r} needs a path")
    _security_checks(cfg)


BIN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
UNSIGNED_OK = ("clear_fault", "flag", "label")  # install/rollback are always signed


def _security_checks(cfg: Config) -> None:
    """Values an attacker or a typo could make dangerous: keys, ids, infinite quotas (#12)."""
    from ecosorter.edge.security import decode_public_key

    if not BIN_ID.fullmatch(cfg.bin_id):
        raise ConfigError("bin_id", f"{cfg.bin_id!r} must be 1-64 of A-Z a-z 0-9 _ - (it is an MQTT topic level)")
    keys = [("model.public_key", cfg.model.public_key)] if cfg.model.public_key else []
    keys += [(f"model.public_keys[{i}]", k) for i, k in enumerate(cfg.model.public_keys)]
    for key, text in keys:
        try:
            decode_public_key(text, key)
        except ValueError as e:
            raise ConfigError(key, f"{str(e).split(': ', 1)[1]} (make one: ecosorter keys new)") from None
    for top in fields(Config):
        section = getattr(cfg, top.name)
        for f in fields(section) if is_dataclass(section) else ():
            v = getattr(section, f.name)
            if isinstance(v, float) and not math.isfinite(v):  # inf passes min= checks: a quota of inf
                raise ConfigError(f"{top.name}.{f.name}", f"must be a finite number, got {v}")
    for action in cfg.commands.trust_broker_for:
        if action not in UNSIGNED_OK:
            raise ConfigError("commands.trust_broker_for", f"{action!r}: only {', '.join(UNSIGNED_OK)} may "
                                                           "skip signatures; install/rollback are always signed")
    for i, host in enumerate(cfg.model.download_hosts):
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?", host):
            raise ConfigError(f"model.download_hosts[{i}]", f"{host!r} must be a host name or host:port")


def example_toml() -> str:
    """The documented example config (deploy/config.example.toml), generated from the schema."""
    out = ["# EcoSorter Edge configuration: /etc/ecosorter/config.toml",
           "# Every key is optional; the values shown are the defaults. Unknown keys are errors.",
           "# Generated by `ecosorter config example` from edge/config.py.", ""]
    top = Config()
    sections = []
    for f in fields(Config):
        value = getattr(top, f.name)
        if is_dataclass(value):
            sections.append((f.name, value))
        else:
            out += _doc_line(f) + [f"{f.name} = {_toml_value(value)}", ""]
    for name, section in sections:
        out.append(f"[{name}]")
        for f in fields(section):
            out += _doc_line(f)
            value = getattr(section, f.name)
            if isinstance(value, dict):
                inline = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
                out.append(f"{f.name} = {{ {inline} }}" if value else f"{f.name} = {{}}")
            else:
                out.append(f"{f.name} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def _doc_line(f) -> list[str]:
    bits = []
    if f.metadata.get("doc"):
        bits.append(f.metadata["doc"])
    if f.metadata.get("allowed"):
        bits.append("one of " + ", ".join(repr(a) for a in f.metadata["allowed"]))
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is not None or hi is not None:
        bits.append(f"range {lo if lo is not None else ''}..{hi if hi is not None else ''}")
    return [f"# {'; '.join(bits)}"] if bits else []


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)
