"""The checks `run` makes before anything moves, made by `config check` too (one list, one report).

`config check` used to say "valid" for a config `run` then refused (a 0644 password_file), and
reported in rounds (schema, then machine rules, then labels). Both now call `preflight`, which
returns every problem at once, and the config as it will really run (a Pi 5 servo driver chosen).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ecosorter.edge.config import Config
from ecosorter.edge.errors import ConfigError, EcoSorterError

log = logging.getLogger("ecosorter.preflight")

SERVO_PROFILES = ("chute", "flaps")


def preflight(cfg: Config, labels: list[str] | None, root: Path = Path("/")) -> tuple[Config, list[ConfigError], list[str]]:
    """(the config as it will run, every error, notes saying what was chosen and why).

    `labels`: the model's labels (None: not known, not checked). `root`: the board's root folder
    (tests fake /proc/device-tree and /sys/class/pwm under it, as doctor's tests do)."""
    from ecosorter.edge.hardware.check import label_errors

    errors: list[ConfigError] = []
    if labels:
        errors += label_errors(cfg, list(labels))
    errors += secret_errors(cfg)
    cfg, servo_errors, notes = choose_servo_driver(cfg, root)
    return cfg, errors + servo_errors, notes


def secret_errors(cfg: Config) -> list[ConfigError]:
    """The secrets `run` reads at start, read the same way (a readable-by-others file is refused)."""
    from ecosorter.edge.secrets import read_secret

    errors = []
    wanted = []
    if cfg.mqtt.enabled:
        wanted.append(("mqtt_password", cfg.mqtt.password_file, "mqtt.password_file"))
    if cfg.status.enabled:
        wanted.append(("page_token", cfg.status.token_file, "status.token_file"))
    for name, path, key in wanted:
        try:
            read_secret(name, path)
        except ConfigError as e:
            errors.append(ConfigError(key, str(e).removeprefix("config ")))
    return errors


def choose_servo_driver(cfg: Config, root: Path = Path("/")) -> tuple[Config, list[ConfigError], list[str]]:
    """On a Pi 5, gpiozero's servos run on lgpio's software PWM: 1% duty steps, 0.2 ms, ~18 deg on a
    0.5-2.5 ms servo, so -30 and 60 deg land between compartments. Use the kernel's hardware PWM
    (sysfs-pwm) when the overlay and the pins allow it, saying so; otherwise refuse to run."""
    from ecosorter.edge.hardware import sysfs_pwm
    from ecosorter.edge.hardware.pins import used_pins

    hw = cfg.hardware
    if hw.profile not in SERVO_PROFILES or hw.servo_driver != "gpiozero" or hw.pin_factory not in ("", "lgpio"):
        return cfg, [], []
    model = sysfs_pwm.board_model(root)
    if "Raspberry Pi 5" not in model and "Compute Module 5" not in model:
        return cfg, [], []
    why = (f"on a {model}, servo_driver = 'gpiozero' makes servo pulses in lgpio's software PWM: 1% duty steps "
           "(~18 deg), so angles such as -30 and 60 land between compartments")
    table = ({int(p): c for p, c in hw.pwm_channels.items()} if hw.pwm_channels else sysfs_pwm.default_channels(model))
    servos = used_pins(hw, servo_pins_only=True)
    off = [f"{key} = {pin}" for key, pin, _ in servos if pin not in table]
    channels = [table[pin] for _, pin, _ in servos if pin in table]
    fix = (f"set hardware.servo_driver = 'sysfs-pwm' with the servos on GPIO {sorted(table)} and "
           f"'{sysfs_pwm.OVERLAY}' in /boot/firmware/config.txt (sudo deploy/install.sh --pwm-overlay), or 'pca9685'")
    if off or len(set(channels)) != len(channels):
        reason = (f"{', '.join(off)} has no hardware PWM channel" if off else "two servos share a PWM channel")
        return cfg, [ConfigError("hardware.servo_driver", f"{why}; sysfs-pwm cannot be used instead ({reason}): {fix}")], []
    sysfs = root / "sys/class/pwm"
    try:
        chip = sysfs_pwm.find_chip(hw.pwm_chip, sysfs)
        npwm = int((chip / "npwm").read_text())
    except (EcoSorterError, OSError, ValueError) as e:
        return cfg, [ConfigError("hardware.servo_driver", f"{why}; no hardware PWM here to use instead ({e}): {fix}")], []
    if max(channels) >= npwm:
        return cfg, [ConfigError("hardware.servo_driver", f"{why}; {chip.name} has {npwm} channels but the servos need "
                                                          f"channel {max(channels)}: {fix}")], []
    chosen = dataclasses.replace(cfg, hardware=dataclasses.replace(hw, servo_driver="sysfs-pwm"))
    note = (f"hardware.servo_driver: using 'sysfs-pwm' ({chip.name}, {npwm} channels) instead of 'gpiozero': {why}; "
            "set servo_driver = 'sysfs-pwm' in the config to make this explicit")
    return chosen, [], [note]
