"""hardware.* config -> an Actuator built from gpiozero devices on one pin factory."""

from __future__ import annotations

from pathlib import Path

from ecosorter.edge.clock import SYSTEM_CLOCK, Clock
from ecosorter.edge.config import HardwareConfig
from ecosorter.edge.errors import ConfigError
from ecosorter.edge.hardware.actuator import Actuator, Axis, NullActuator
from ecosorter.edge.hardware.pins import make_pin_factory, used_pins, validate_pins
from ecosorter.edge.machine import Machine


def make_actuator(cfg: HardwareConfig, compartments: int, pin_factory=None, machine: Machine | None = None,
                  clock: Clock = SYSTEM_CLOCK, servos=None) -> Actuator:
    """`servos`: a pin -> servo callable in place of servo_maker(cfg) (tests: fake sysfs or I2C bus)."""
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
        other_servo = servos or servo_maker(cfg)  # None for gpiozero; sysfs-pwm / pca9685 build their own

        def servo(pin):
            if other_servo is not None:
                made.append(s := other_servo(pin))
                return s
            # initial_angle=None: no pulse until the first move, so power-up does not twitch it.
            return dev(gpiozero.AngularServo, pin, initial_angle=None, min_angle=span[0], max_angle=span[1],
                       min_pulse_width=lo, max_pulse_width=hi)

        order = iter(range(len(used_pins(cfg, servo_pins_only=True))))

        def axis(name: str, device, switch_pin: int = -1, switch_angle: float | None = None) -> Axis:
            switch = dev(gpiozero.Button, switch_pin, pull_up=True) if switch_pin >= 0 else None
            i = next(order)  # servos are built in feedback_channels order: chute, trapdoor; or flap 0, 1, ...
            adc = _adc(dev, pf, cfg.feedback_channels[i]) if cfg.feedback_adc == "mcp3008" else None
            fmap = (cfg.feedback_at_min[i], cfg.feedback_at_max[i]) if adc is not None and cfg.feedback_at_min else None
            return Axis(name, device, cfg.servo_speed_deg_s, cfg.settle_s, span, switch, switch_angle, adc, fmap,
                        cfg.feedback_tolerance_deg)

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
        chute, door = servo(cfg.chute_pin), servo(cfg.trapdoor_pin)  # profile "pca9685": channels 0, 1
        return ChuteActuator(axis("chute", chute, cfg.chute_home_switch_pin, cfg.chute_home_angle),
                             axis("trapdoor", door, cfg.trapdoor_closed_switch_pin, cfg.trapdoor_closed_angle),
                             cfg.chute_angles[:compartments], cfg.chute_home_angle, cfg.trapdoor_closed_angle,
                             cfg.trapdoor_open_angle, cfg.drop_s, **common)
    except BaseException:
        for d in made:
            d.close()
        raise


def _adc(dev, pf, channel: int):
    """An MCP3008 channel on SPI0. gpiozero's software SPI bus (what a MockFactory gives, or a Pi
    without spidev) asks for a default pin factory although it is handed one: lend it ours for
    the moment of construction, so that off a Pi it does not fail looking for lgpio."""
    import gpiozero

    lent = gpiozero.Device.pin_factory is None
    if lent:
        gpiozero.Device.pin_factory = pf
    # gpiozero shares one SPI interface per pin set through a class-wide table, and every shared
    # device sits in a reference cycle (its close() is a closure over itself). An earlier, closed one
    # finalized by the collector in the middle of this build deletes the table's entry of the *live*
    # interface with the same pins, so the next channel builds a second bus and finds its clock pin
    # taken (GPIOPinInUse). Collecting first finalizes every stale one before ours registers.
    import gc

    gc.collect()
    try:
        return dev(gpiozero.MCP3008, channel=channel)
    finally:
        if lent:
            gpiozero.Device.pin_factory = None


def servo_driver(cfg: HardwareConfig) -> str:
    """profile = "pca9685" is the chute on a PCA9685, from before hardware.servo_driver existed."""
    return "pca9685" if cfg.profile == "pca9685" else cfg.servo_driver


def servo_maker(cfg: HardwareConfig, sysfs_root: Path | None = None, bus=None, board_root: Path = Path("/")):
    """pin -> servo for servo_driver sysfs-pwm or pca9685 (None: gpiozero's AngularServo).

    sysfs-pwm maps each servo pin to its PWM channel; pca9685 gives servos the channels of
    hardware.pca9685_channels in the order they are built (chute, trapdoor; or flap 0, 1, ...).
    `sysfs_root`, `bus` and `board_root` are the seams tests use for a fake sysfs tree and I2C bus.
    """
    driver = servo_driver(cfg)
    keys = {pin: key for key, pin, _ in used_pins(cfg, servo_pins_only=True)}
    if driver == "gpiozero" or not keys:
        return None
    calib = {"min_angle": cfg.servo_min_angle, "max_angle": cfg.servo_max_angle,
             "min_pulse_width": cfg.min_pulse_width_ms / 1000, "max_pulse_width": cfg.max_pulse_width_ms / 1000}
    if driver == "sysfs-pwm":
        from ecosorter.edge.hardware import sysfs_pwm

        root = sysfs_root or sysfs_pwm.SYSFS_PWM
        channels = ({int(p): c for p, c in cfg.pwm_channels.items()} if cfg.pwm_channels
                    else sysfs_pwm.default_channels(sysfs_pwm.board_model(board_root)))
        taken: dict[int, str] = {}
        for pin, key in keys.items():
            if pin not in channels:
                raise ConfigError(key, f"GPIO{pin} has no hardware PWM channel for servo_driver = 'sysfs-pwm' "
                                       f"(PWM pins here: {sorted(channels)}; set hardware.pwm_channels to map it)")
            if channels[pin] in taken:
                raise ConfigError(key, f"GPIO{pin} is on PWM channel {channels[pin]}, already driving {taken[channels[pin]]}")
            taken[channels[pin]] = key
        chip = sysfs_pwm.find_chip(cfg.pwm_chip, root)
        return lambda pin: sysfs_pwm.SysfsPwmServo(chip, channels[pin], key=keys[pin], **calib)
    from ecosorter.edge.hardware.pca9685 import PCA9685, PCA9685Servo, open_bus

    _need(cfg.pca9685_channels, len(keys), "hardware.pca9685_channels")
    bus = bus if bus is not None else open_bus(cfg.i2c_bus)
    try:
        board = PCA9685(bus, cfg.pca9685_address)
    except BaseException:
        bus.close()
        raise
    order = iter(cfg.pca9685_channels)
    return lambda pin: PCA9685Servo(board, next(order), key=f"hardware.pca9685_channels ({keys.get(pin, 'servo')})", **calib)


def _need(items: list, n: int, key: str) -> None:
    if len(items) < n:
        raise ConfigError(key, f"{len(items)} given but the compartment map uses {n} compartments")
