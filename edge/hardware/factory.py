"""hardware.* config -> an Actuator built from gpiozero devices on one pin factory."""

from __future__ import annotations

from ecosorter.edge.config import HardwareConfig
from ecosorter.edge.hardware.actuator import Actuator, NullActuator
from ecosorter.edge.hardware.pins import make_pin_factory, validate_pins


def make_actuator(cfg: HardwareConfig, compartments: int, fallback: int, pin_factory=None) -> Actuator:
    validate_pins(cfg, require_hardware_pwm=cfg.profile == "chute" and cfg.pin_factory in ("", "lgpio"))
    if cfg.profile == "none":
        return NullActuator(compartments, fallback=fallback)
    import gpiozero

    pf = pin_factory if pin_factory is not None else make_pin_factory(cfg.pin_factory)
    made: list = []

    def dev(cls, *a, **k):
        d = cls(*a, pin_factory=pf, **k)
        made.append(d)
        return d

    try:
        common = {
            "fallback": fallback,
            "when_full": cfg.when_full,
            "move_budget_s": cfg.move_budget_s,
            "interlock": dev(gpiozero.Button, cfg.interlock_pin, pull_up=True) if cfg.interlock_pin >= 0 else None,
            "full_sensors": {int(c): dev(gpiozero.Button, p, pull_up=True) for c, p in cfg.full_sensor_pins.items()},
            "status_led": dev(gpiozero.RGBLED, *cfg.status_led_pins) if len(cfg.status_led_pins) == 3 else None,
        }
        lo, hi = cfg.min_pulse_width_ms / 1000, cfg.max_pulse_width_ms / 1000

        def servo(pin):
            # initial_angle=None: no pulse until the first move, so power-up does not twitch it.
            return dev(gpiozero.AngularServo, pin, initial_angle=None, min_angle=-90, max_angle=90,
                       min_pulse_width=lo, max_pulse_width=hi)

        if cfg.profile == "leds":
            from ecosorter.edge.hardware.leds import LedActuator

            _need(cfg.led_pins, compartments, "hardware.led_pins")
            leds = [dev(gpiozero.LED, p) for p in cfg.led_pins]
            buzzer = dev(gpiozero.Buzzer, cfg.buzzer_pin) if cfg.buzzer_pin >= 0 else None
            return LedActuator(leds, buzzer, cfg.led_on_s, **common)
        from ecosorter.edge.hardware.servos import ChuteActuator, FlapsActuator

        if cfg.profile == "flaps":
            _need(cfg.flap_pins, compartments, "hardware.flap_pins")
            return FlapsActuator([servo(p) for p in cfg.flap_pins], cfg.flap_closed_angle, cfg.flap_open_angle,
                                 cfg.drop_s, cfg.settle_s, **common)
        _need(cfg.chute_angles, compartments, "hardware.chute_angles")
        if cfg.profile == "pca9685":
            from ecosorter.edge.hardware.pca9685 import KitServo, open_kit

            kit = open_kit(cfg.pca9685_address)
            lo_us, hi_us = int(cfg.min_pulse_width_ms * 1000), int(cfg.max_pulse_width_ms * 1000)
            chute, door = (KitServo(kit.servo[ch], lo_us, hi_us) for ch in cfg.pca9685_channels[:2])
        else:
            chute, door = servo(cfg.chute_pin), servo(cfg.trapdoor_pin)
        return ChuteActuator(chute, door, cfg.chute_angles, cfg.chute_home_angle, cfg.trapdoor_closed_angle,
                             cfg.trapdoor_open_angle, cfg.settle_s, cfg.drop_s, **common)
    except BaseException:
        for d in made:
            d.close()
        raise


def _need(items: list, n: int, key: str) -> None:
    if len(items) < n:
        from ecosorter.edge.errors import ConfigError

        raise ConfigError(key, f"{len(items)} given but the compartment map uses {n} compartments")
