"""hardware.* config -> an Actuator built from gpiozero devices on one pin factory."""

from __future__ import annotations

from ecosorter.edge.clock import SYSTEM_CLOCK, Clock
from ecosorter.edge.config import HardwareConfig
from ecosorter.edge.hardware.actuator import Actuator, Axis, NullActuator
from ecosorter.edge.hardware.pins import make_pin_factory, validate_pins
from ecosorter.edge.machine import Machine


def make_actuator(cfg: HardwareConfig, compartments: int, pin_factory=None, machine: Machine | None = None,
                  clock: Clock = SYSTEM_CLOCK) -> Actuator:
    validate_pins(cfg)
    if cfg.profile == "none":
        return NullActuator(compartments, machine=machine, clock=clock)
    import gpiozero

    pf = pin_factory if pin_factory is not None else make_pin_factory(cfg.pin_factory)
    made: list = []

    def dev(cls, *a, **k):
        d = cls(*a, pin_factory=pf, **k)
        made.append(d)
        return d

    try:
        common = {
            "machine": machine,
            "clock": clock,
            "move_budget_s": cfg.move_budget_s,
            "interlock": dev(gpiozero.Button, cfg.interlock_pin, pull_up=True) if cfg.interlock_pin >= 0 else None,
            "full_sensors": {int(c): dev(gpiozero.Button, p, pull_up=True) for c, p in cfg.full_sensor_pins.items()},
            "status_led": dev(gpiozero.RGBLED, *cfg.status_led_pins) if len(cfg.status_led_pins) == 3 else None,
        }
        lo, hi = cfg.min_pulse_width_ms / 1000, cfg.max_pulse_width_ms / 1000

        span = (cfg.servo_min_angle, cfg.servo_max_angle)

        def servo(pin):
            # initial_angle=None: no pulse until the first move, so power-up does not twitch it.
            return dev(gpiozero.AngularServo, pin, initial_angle=None, min_angle=span[0], max_angle=span[1],
                       min_pulse_width=lo, max_pulse_width=hi)

        def axis(name: str, device, switch_pin: int = -1, switch_angle: float | None = None) -> Axis:
            switch = dev(gpiozero.Button, switch_pin, pull_up=True) if switch_pin >= 0 else None
            return Axis(name, device, cfg.servo_speed_deg_s, cfg.settle_s, span, switch, switch_angle)

        if cfg.profile == "leds":
            from ecosorter.edge.hardware.leds import LedActuator

            _need(cfg.led_pins, compartments, "hardware.led_pins")
            leds = [dev(gpiozero.LED, p) for p in cfg.led_pins[:compartments]]
            buzzer = dev(gpiozero.Buzzer, cfg.buzzer_pin) if cfg.buzzer_pin >= 0 else None
            return LedActuator(leds, buzzer, cfg.led_on_s, **common)
        from ecosorter.edge.hardware.servos import ChuteActuator, FlapsActuator

        if cfg.profile == "flaps":
            _need(cfg.flap_pins, compartments, "hardware.flap_pins")
            flaps = [axis(f"flap{i}", servo(p)) for i, p in enumerate(cfg.flap_pins[:compartments])]
            return FlapsActuator(flaps, cfg.flap_closed_angle, cfg.flap_open_angle, cfg.drop_s, **common)
        _need(cfg.chute_angles, compartments, "hardware.chute_angles")
        if cfg.profile == "pca9685":
            from ecosorter.edge.hardware.pca9685 import KitServo, open_kit

            kit = open_kit(cfg.pca9685_address)
            lo_us, hi_us = int(cfg.min_pulse_width_ms * 1000), int(cfg.max_pulse_width_ms * 1000)
            chute, door = (KitServo(kit.servo[ch], lo_us, hi_us) for ch in cfg.pca9685_channels[:2])
        else:
            chute, door = servo(cfg.chute_pin), servo(cfg.trapdoor_pin)
        return ChuteActuator(axis("chute", chute, cfg.chute_home_switch_pin, cfg.chute_home_angle),
                             axis("trapdoor", door, cfg.trapdoor_closed_switch_pin, cfg.trapdoor_closed_angle),
                             cfg.chute_angles[:compartments], cfg.chute_home_angle, cfg.trapdoor_closed_angle,
                             cfg.trapdoor_open_angle, cfg.drop_s, **common)
    except BaseException:
        for d in made:
            d.close()
        raise


def _need(items: list, n: int, key: str) -> None:
    if len(items) < n:
        from ecosorter.edge.errors import ConfigError

        raise ConfigError(key, f"{len(items)} given but the compartment map uses {n} compartments")
