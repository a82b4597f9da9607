"""The config checked as one machine: rules between hardware keys that each key alone cannot see.

Run by `config check`, `doctor`, `run` and `simulate` (through config validation); every
problem is reported at once. Warnings are things that work but a builder should know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecosorter.edge.errors import ConfigError
from ecosorter.edge.hardware.pins import HARDWARE_PWM_PINS, pin_errors, used_pins

if TYPE_CHECKING:  # types only: edge.config runs these rules, so this module must not import it back
    from ecosorter.edge.config import Config, HardwareConfig

__all__ = ["compartment_count", "label_errors", "longest_move_s", "machine_errors", "machine_warnings",
           "pin_errors", "servo_angles"]

NAME_MAX = 12  # a compartment name fits its tile on the 800 px screen


def compartment_count(hw: HardwareConfig) -> int:
    return max(hw.compartments.values(), default=-1) + 1


def name_errors(hw: HardwareConfig, n: int) -> list[ConfigError]:
    """compartment_names: one short name per compartment, as printed on the bin (the page shows them)."""
    names = hw.compartment_names
    if not names:
        return []
    if len(names) != n:
        return [ConfigError("hardware.compartment_names", f"{len(names)} names for {n} compartments "
                                                          "(hardware.compartments): one per compartment, or []")]
    return [ConfigError(f"hardware.compartment_names[{i}]", f"{name!r}: 1-{NAME_MAX} characters")
            for i, name in enumerate(names) if not 0 < len(name.strip()) <= NAME_MAX]


def servo_angles(hw: HardwareConfig) -> list[tuple[str, float]]:
    """(key, angle) of every servo position this profile uses."""
    if hw.profile in ("chute", "pca9685"):
        return [*((f"hardware.chute_angles[{i}]", a) for i, a in enumerate(hw.chute_angles)),
                ("hardware.chute_home_angle", hw.chute_home_angle),
                ("hardware.trapdoor_closed_angle", hw.trapdoor_closed_angle),
                ("hardware.trapdoor_open_angle", hw.trapdoor_open_angle)]
    if hw.profile == "flaps":
        return [("hardware.flap_closed_angle", hw.flap_closed_angle), ("hardware.flap_open_angle", hw.flap_open_angle)]
    return []


def longest_move_s(hw: HardwareConfig) -> float:
    """The slowest single move: from an unknown position (power-up, after a jam) across the range."""
    return (hw.servo_max_angle - hw.servo_min_angle) / hw.servo_speed_deg_s + hw.settle_s


def machine_errors(cfg: Config) -> list[ConfigError]:
    hw = cfg.hardware
    errors = name_errors(hw, compartment_count(hw))
    if hw.profile == "none":
        if cfg.trigger.mode == "sensor":
            errors.append(ConfigError("trigger.mode", "'sensor' needs the item sensor's pin, and hardware.profile = "
                                                      "'none' claims no pins: use 'vision', or a hardware profile"))
        return errors
    errors += pin_errors(hw)
    n = compartment_count(hw)
    used = sorted(set(hw.compartments.values()))
    if used != list(range(n)):
        missing = sorted(set(range(n)) - set(used))
        errors.append(ConfigError("hardware.compartments", f"compartments {missing} have no label; number them 0..{n - 1} "
                                                           "without gaps"))
    lists = {"leds": ("led_pins", hw.led_pins), "flaps": ("flap_pins", hw.flap_pins),
             "chute": ("chute_angles", hw.chute_angles), "pca9685": ("chute_angles", hw.chute_angles)}
    if hw.profile in lists:
        key, items = lists[hw.profile]
        if len(items) != n:
            errors.append(ConfigError(f"hardware.{key}", f"{len(items)} given for {n} compartments "
                                                         "(hardware.compartments): one per compartment"))
    if hw.status_led_pins and len(hw.status_led_pins) != 3:
        errors.append(ConfigError("hardware.status_led_pins", f"{len(hw.status_led_pins)} pins: an RGB LED needs "
                                                              "3 (r, g, b), or [] for none"))
    for c, _pin in hw.full_sensor_pins.items():
        if not (c.isascii() and c.isdigit()) or int(c) >= n:
            errors.append(ConfigError(f"hardware.full_sensor_pins.{c}", f"no compartment {c!r}; compartments are "
                                                                        f"0..{n - 1}"))
    lo, hi = hw.servo_min_angle, hw.servo_max_angle
    if lo >= hi:
        errors.append(ConfigError("hardware.servo_min_angle", f"{lo:g} must be below hardware.servo_max_angle ({hi:g})"))
    else:
        for key, angle in servo_angles(hw):
            if not lo <= angle <= hi:
                errors.append(ConfigError(key, f"{angle:g} deg is outside the servo's range {lo:g}..{hi:g} "
                                               "(hardware.servo_min_angle / servo_max_angle)"))
        pairs = {"chute": ("trapdoor_closed_angle", "trapdoor_open_angle"), "pca9685": ("trapdoor_closed_angle",
                 "trapdoor_open_angle"), "flaps": ("flap_closed_angle", "flap_open_angle")}.get(hw.profile)
        if pairs and abs(getattr(hw, pairs[0]) - getattr(hw, pairs[1])) < 10:
            errors.append(ConfigError(f"hardware.{pairs[1]}", f"{getattr(hw, pairs[1]):g} deg is within 10 deg of "
                                      f"hardware.{pairs[0]}: nothing would ever drop"))
        if hw.profile in ("chute", "pca9685"):
            seen_angles: dict[float, int] = {}
            for i, a in enumerate(hw.chute_angles):
                if a in seen_angles:
                    errors.append(ConfigError(f"hardware.chute_angles[{i}]", f"{a:g} deg is also compartment "
                                              f"{seen_angles[a]}'s: every compartment needs its own angle"))
                seen_angles.setdefault(a, i)
        longest = longest_move_s(hw)
        if servo_angles(hw) and hw.move_budget_s < longest:
            errors.append(ConfigError("hardware.move_budget_s", f"{hw.move_budget_s:g} s is below the longest move, "
                                      f"{longest:.2f} s ({hi - lo:g} deg at {hw.servo_speed_deg_s:g} deg/s + settle "
                                      f"{hw.settle_s:g} s): every such move would be a fault"))
    if hw.profile not in ("chute", "pca9685"):
        for key in ("chute_home_switch_pin", "trapdoor_closed_switch_pin"):
            if getattr(hw, key) >= 0:
                errors.append(ConfigError(f"hardware.{key}", f"only the chute profiles have it (profile = {hw.profile!r})"))
    errors += feedback_errors(hw)
    if hw.interlock_resume == "button" and hw.wrong_button_pin < 0:
        errors.append(ConfigError("hardware.interlock_resume", "'button' needs hardware.wrong_button_pin "
                                                               "(the button that resumes)"))
    if hw.item_sensor_kind == "ultrasonic" and hw.item_sensor_pin >= 0 and hw.item_sensor_trigger_pin < 0:
        errors.append(ConfigError("hardware.item_sensor_trigger_pin", "an ultrasonic sensor needs its trigger pin"))
    return errors


def servo_count(hw: HardwareConfig) -> int:
    return len(used_pins(hw, servo_pins_only=True))


def feedback_errors(hw: HardwareConfig) -> list[ConfigError]:
    """Position feedback: one ADC channel per servo, and a calibration for each (or none yet)."""
    if hw.feedback_adc == "none":
        return []
    if hw.profile not in ("chute", "flaps"):
        return [ConfigError("hardware.feedback_adc", f"only the servo profiles (chute, flaps) have it "
                                                     f"(profile = {hw.profile!r})")]
    n, errors = servo_count(hw), []
    if len(hw.feedback_channels) != n or len(set(hw.feedback_channels)) != n \
            or not all(0 <= c <= 7 for c in hw.feedback_channels):
        errors.append(ConfigError("hardware.feedback_channels", f"{hw.feedback_channels}: one distinct MCP3008 "
                                                                f"channel 0-7 for each of the {n} servos"))
    lo, hi = hw.feedback_at_min, hw.feedback_at_max
    if lo or hi:
        if len(lo) != n or len(hi) != n:
            errors.append(ConfigError("hardware.feedback_at_min", f"{len(lo)} and {len(hi)} readings (at_min, at_max) "
                                                                  f"for {n} servos: run `ecosorter calibrate` again"))
        else:
            for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
                if not (0 <= a <= 1 and 0 <= b <= 1) or abs(a - b) < 0.05:
                    errors.append(ConfigError(f"hardware.feedback_at_min[{i}]", f"{a:g} .. {b:g}: readings are 0-1 and "
                                              "must differ across the servo's range (is the feedback wire on that "
                                              "channel?): run `ecosorter calibrate` again"))
    return errors


def label_errors(cfg: Config, labels: list[str]) -> list[ConfigError]:
    """Rules against the model's labels (known once the model's manifest is read)."""
    errors = []
    shown = ", ".join(labels)
    for label in cfg.hardware.compartments:
        if label not in labels:
            errors.append(ConfigError(f"hardware.compartments.{label}", f"not a label of the model ({shown})"))
    missing = [lb for lb in labels if lb not in cfg.hardware.compartments]
    if missing:
        errors.append(ConfigError("hardware.compartments", f"no compartment for {', '.join(missing)} (the model's "
                                                           f"labels: {shown})"))
    if cfg.decision.fallback not in labels:
        errors.append(ConfigError("decision.fallback", f"{cfg.decision.fallback!r} is not a label of the model ({shown})"))
    for label in cfg.decision.class_thresholds:
        if label not in labels:
            errors.append(ConfigError(f"decision.class_thresholds.{label}", f"not a label of the model ({shown})"))
    return errors


def machine_warnings(cfg: Config) -> list[str]:
    hw, out = cfg.hardware, []
    if hw.profile in ("chute", "flaps") and hw.servo_driver == "gpiozero":
        soft = [f"{k} (GPIO{p})" for k, p, pwm in used_pins(hw) if pwm and p not in HARDWARE_PWM_PINS]
        if soft:
            out.append(f"hardware: no hardware PWM on {', '.join(soft)}: servos jitter on software PWM; use GPIO "
                       f"{sorted(HARDWARE_PWM_PINS)} with servo_driver = \"sysfs-pwm\" (docs/pi.md) or \"pca9685\"")
    if hw.profile in ("chute", "flaps", "pca9685") and hw.wrong_button_pin < 0:
        out.append("hardware: no wrong/clear button (wrong_button_pin): a latched fault (a jam) can only be cleared "
                   "from the page, MQTT clear_fault or a restart")
    if hw.feedback_adc != "none" and not hw.feedback_at_min:
        out.append("hardware: feedback_adc is set but not calibrated (feedback_at_min / feedback_at_max): arrival is "
                   "not checked until `ecosorter calibrate` has measured each servo")
    if hw.profile in ("chute", "flaps") and hw.feedback_adc == "none":
        out.append("hardware: no position feedback (feedback_adc): a servo that stops short or runs slow is not "
                   "seen before the door opens (README, 'What the bin cannot see')")
    if hw.profile in ("chute", "pca9685") and hw.chute_home_switch_pin < 0 and hw.trapdoor_closed_switch_pin < 0:
        out.append("hardware: no position switches: a jammed chute or trapdoor cannot be seen (README, 'Operating the bin')")
    return out
