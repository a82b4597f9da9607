"""The one pin-factory seam, and start-up validation of every pin in the config."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ecosorter.edge.errors import ConfigError, ConfigErrors, HardwareError

if TYPE_CHECKING:  # types only: edge.config imports the machine rules, which import this module
    from ecosorter.edge.config import HardwareConfig

# BCM pins with a hardware PWM channel on Pi 4/5 (PWM0: 12, 18; PWM1: 13, 19).
HARDWARE_PWM_PINS = frozenset({12, 13, 18, 19})
GPIO_RANGE = range(0, 28)
SPI0_PINS = {"SCLK": 11, "MOSI": 10, "MISO": 9, "CE0": 8}
# What to do when gpiozero finds no pin library (its "BadPinFactory: Unable to load any default pin factory!").
NO_PIN_LIBRARY = ("gpiozero found no pin library. On a Raspberry Pi: sudo apt install python3-lgpio and use a venv "
                  "made with --system-site-packages (sudo deploy/install.sh does both). Not on a Pi: set "
                  'hardware.pin_factory = "mock", or use `ecosorter run --simulate`')


def make_pin_factory(name: str = ""):
    """'' = gpiozero's default for the board (lgpio on a Pi 5), or a named one; 'mock' simulates."""
    if not name:
        name = os.environ.get("GPIOZERO_PIN_FACTORY", "")
        if not name:
            return default_pin_factory()
    try:
        if name == "mock":
            from gpiozero.pins.mock import MockFactory, MockPWMPin

            return MockFactory(pin_class=MockPWMPin)
        if name == "lgpio":
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        if name == "pigpio":
            from gpiozero.pins.pigpio import PiGPIOFactory

            return PiGPIOFactory()
        if name == "rpigpio":
            from gpiozero.pins.rpigpio import RPiGPIOFactory

            return RPiGPIOFactory()
        if name == "native":
            from gpiozero.pins.native import NativeFactory

            return NativeFactory()
    except Exception as e:
        raise HardwareError(f"hardware.pin_factory = {name!r} cannot start: {type(e).__name__}: {e}") from None
    raise ConfigError("hardware.pin_factory", f"{name!r} is not a known pin factory")


def default_pin_factory():
    """gpiozero's own choice for the board (lgpio on a Pi 5), made now so that a machine without a
    pin library gets what to do instead of BadPinFactory's traceback at the first device."""
    import warnings

    from gpiozero import Device
    from gpiozero.exc import BadPinFactory, PinFactoryFallback

    if Device.pin_factory is None:
        try:
            with warnings.catch_warnings():  # one "falling back from ..." per library: the advice below says it
                warnings.simplefilter("ignore", PinFactoryFallback)
                Device.pin_factory = Device._default_pin_factory()
        except BadPinFactory:
            raise HardwareError(f"hardware.pin_factory = '': {NO_PIN_LIBRARY}") from None
    return Device.pin_factory


def used_pins(cfg: HardwareConfig, servo_pins_only: bool = False) -> list[tuple[str, int, bool]]:
    """(config key, BCM pin, needs hardware PWM) for every pin this profile will claim.

    servo_pins_only: just the servos' pins (or, for a PCA9685, the pins naming each servo)."""
    pins: list[tuple[str, int, bool]] = []
    if cfg.profile == "leds" and not servo_pins_only:
        pins += [(f"hardware.led_pins[{i}]", p, False) for i, p in enumerate(cfg.led_pins)]
        if cfg.buzzer_pin >= 0:
            pins.append(("hardware.buzzer_pin", cfg.buzzer_pin, False))
    elif cfg.profile in ("chute", "pca9685"):
        pins += [("hardware.chute_pin", cfg.chute_pin, True), ("hardware.trapdoor_pin", cfg.trapdoor_pin, True)]
    elif cfg.profile == "flaps":
        pins += [(f"hardware.flap_pins[{i}]", p, True) for i, p in enumerate(cfg.flap_pins)]
    if servo_pins_only:
        return pins
    if cfg.profile == "pca9685" or (cfg.servo_driver == "pca9685" and cfg.profile in ("chute", "flaps")):
        # the servos hang off the PCA9685: their *_pin keys claim nothing; its I2C bus uses GPIO 2 and 3
        pins = [("I2C SDA (pca9685)", 2, False), ("I2C SCL (pca9685)", 3, False)]
    if cfg.feedback_adc == "mcp3008" and cfg.profile != "leds":  # SPI0, CE0: the ADC reading the servos
        pins += [(f"SPI {role} (feedback_adc mcp3008)", p, False) for role, p in SPI0_PINS.items()]
    pins += [(f"hardware.status_led_pins[{i}]", p, False) for i, p in enumerate(cfg.status_led_pins)]
    for key in INPUT_PIN_KEYS:
        if getattr(cfg, key) >= 0:
            pins.append((f"hardware.{key}", getattr(cfg, key), False))
    pins += [(f"hardware.full_sensor_pins.{c}", p, False) for c, p in cfg.full_sensor_pins.items()]
    return pins


# One registry of single-pin input roles: used_pins and the simulator both read it.
INPUT_PIN_KEYS = ("interlock_pin", "item_sensor_pin", "item_sensor_trigger_pin", "wrong_button_pin",
                  "power_fail_pin", "chute_home_switch_pin", "trapdoor_closed_switch_pin")


def pin_errors(hw: HardwareConfig) -> list[ConfigError]:
    errors, seen = [], {}
    for key, pin, _pwm in used_pins(hw):
        if pin not in GPIO_RANGE:
            errors.append(ConfigError(key, f"GPIO{pin} does not exist; BCM pins are 0-27"))
        elif pin in seen:
            errors.append(ConfigError(key, f"GPIO{pin} is already used by {seen[pin]}"))
        else:
            seen[pin] = key
    return errors


def validate_pins(cfg: HardwareConfig) -> None:
    """Every pin exists and has one role (all problems at once)."""
    errors = pin_errors(cfg)
    if errors:
        raise ConfigErrors(errors)
