"""Every actuator profile on gpiozero's own MockFactory/MockPWMPin: pin states in time order."""

from __future__ import annotations

import time

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.errors import ConfigError
from ecosorter.edge.hardware import make_actuator, validate_pins
from tests.conftest import duty

FAST = {"hardware.settle_s": 0.02, "hardware.drop_s": 0.03, "hardware.move_budget_s": 1.0}






def hw(**overrides):
    return load_config(overrides={"hardware.pin_factory": "mock", **overrides}).hardware


def states(pin) -> list[float]:
    """The pin's state history with consecutive repeats folded (PWM duty, or 0 when detached)."""
    out: list[float] = []
    for s in pin.states:
        v = round(float(s.state), 4)
        if not out or out[-1] != v:
            out.append(v)
    return out


def test_chute_sequence_in_order_and_detached(factory):
    cfg = hw(**{"hardware.profile": "chute", **FAST})
    with make_actuator(cfg, 7, fallback=3, pin_factory=factory) as act:
        chute, door = factory.pin(12), factory.pin(13)
        chute.clear_states()
        door.clear_states()
        t0 = time.monotonic()
        result = act.route(6)
        assert result.ok and result.compartment == 6
        assert time.monotonic() - t0 >= 0.02 * 3 + 0.03
        # chute turns to 90 deg, back home to 0, then no pulses (detached)
        assert states(chute)[-3:] == [round(duty(90), 4), round(duty(0), 4), 0.0]
        # trapdoor opens only after the chute moved, closes before the chute goes home
        assert states(door)[-3:] == [round(duty(0), 4), round(duty(-90), 4), 0.0]
        t_chute_moved = next(s.timestamp for s in chute.states if round(s.state, 4) == round(duty(90), 4))
        t_door_open = next(s.timestamp for s in door.states if round(s.state, 4) == round(duty(0), 4))
        t_door_closed = [s.timestamp for s in door.states if round(s.state, 4) == round(duty(-90), 4)][-1]
        t_home = [s.timestamp for s in chute.states if round(s.state, 4) == round(duty(0), 4)][-1]
        assert t_chute_moved < t_door_open < t_door_closed < t_home
        assert chute.frequency is None and door.frequency is None


def test_flaps_open_only_the_items_flap(factory):
    cfg = hw(**{"hardware.profile": "flaps", **FAST})
    with make_actuator(cfg, 7, fallback=3, pin_factory=factory) as act:
        pins = [factory.pin(p) for p in cfg.flap_pins]
        for p in pins:
            p.clear_states()
        assert act.route(2).ok
        assert states(pins[2]) == [0.0, round(duty(0), 4), round(duty(-90), 4), 0.0]
        assert all(states(p) == [0.0] for i, p in enumerate(pins) if i != 2)


def test_leds_light_the_compartment_for_on_time(factory):
    cfg = hw(**{"hardware.profile": "leds", "hardware.led_on_s": 0.15, "hardware.buzzer_pin": 21})
    with make_actuator(cfg, 7, fallback=3, pin_factory=factory) as act:
        leds = [factory.pin(p) for p in cfg.led_pins]
        assert act.route(4).ok
        time.sleep(0.05)
        assert [p.state for p in leds] == [0, 0, 0, 0, 1, 0, 0]
        time.sleep(0.25)
        assert [p.state for p in leds] == [0] * 7
        assert any(s.state for s in factory.pin(21).states)  # the buzzer beeped


def test_interlock_open_means_no_movement(factory):
    cfg = hw(**{"hardware.profile": "chute", "hardware.interlock_pin": 17, **FAST})
    with make_actuator(cfg, 7, fallback=3, pin_factory=factory) as act:
        lid = factory.pin(17)
        lid.drive_high()  # pull-up: high = switch open = lid open
        chute = factory.pin(12)
        chute.clear_states()
        r = act.route(1)
        assert not r.ok and "lid open" in r.note
        assert states(chute) == [0.0]
        assert act.route(1).note.startswith("fault")  # faults latch until cleared
        lid.drive_low()
        act.clear_fault()
        assert act.route(1).ok


def test_lid_opened_mid_move_stops_and_leaves_safe(factory):
    cfg = hw(**{"hardware.profile": "chute", "hardware.interlock_pin": 17, "hardware.settle_s": 0.2,
                "hardware.drop_s": 0.2, "hardware.move_budget_s": 5.0})
    with make_actuator(cfg, 7, fallback=3, pin_factory=factory) as act:
        lid = factory.pin(17)
        lid.drive_low()
        import threading

        threading.Timer(0.05, lid.drive_high).start()
        r = act.route(5)
        assert not r.ok and "lid opened during chute move" in r.note
        door, chute = factory.pin(13), factory.pin(12)
        assert round(door.states[-2].state, 4) == round(duty(-90), 4)  # door closed, then detached
        assert chute.frequency is None and door.frequency is None


def test_move_over_budget_is_a_fault(factory):
    cfg = hw(**{"hardware.profile": "chute", "hardware.settle_s": 0.3, "hardware.drop_s": 0.1,
                "hardware.move_budget_s": 0.1})
    with make_actuator(cfg, 7, fallback=3, pin_factory=factory) as act:
        r = act.route(0)
        assert not r.ok and "exceeded the 0.1 s move budget" in r.note
        assert act.fault


@pytest.mark.parametrize("when_full", ["fallback", "pause"])
def test_full_compartment(factory, when_full):
    cfg = hw(**{"hardware.profile": "flaps", "hardware.full_sensor_pins": {"2": 22},
                "hardware.when_full": when_full, **FAST})
    with make_actuator(cfg, 7, fallback=3, pin_factory=factory) as act:
        factory.pin(22).drive_low()  # pull-up input pressed = full
        r = act.route(2)
        if when_full == "fallback":
            assert r.ok and r.compartment == 3 and "full" in r.note
        else:
            assert not r.ok and "full; bin paused" in r.note


def test_every_exit_path_leaves_servos_home_and_detached(factory):
    cfg = hw(**{"hardware.profile": "chute", **FAST})
    with pytest.raises(RuntimeError), make_actuator(cfg, 7, fallback=3, pin_factory=factory) as act:
        act.chute.angle = 45  # as if interrupted mid-move
        act.trapdoor.angle = 0
        raise RuntimeError("a stage crashed")
    door, chute = factory.pin(13), factory.pin(12)
    assert round(door.states[-2].state, 4) == round(duty(-90), 4)
    assert round(chute.states[-2].state, 4) == round(duty(0), 4)
    assert chute.frequency is None and door.frequency is None


def test_status_led_shows_states(factory):
    cfg = hw(**{"hardware.profile": "leds", "hardware.status_led_pins": [23, 24, 25], "hardware.led_on_s": 0.01})
    act = make_actuator(cfg, 7, fallback=3, pin_factory=factory)
    assert act.status_led.color == (0, 1, 0)
    act.route(1, uncertain=True)
    assert act.status_led.color == (1, 0.5, 0)
    act.close()
    assert [factory.pin(p).state for p in (23, 24, 25)] == [0, 0, 0]


def test_pins_validated_at_start():
    with pytest.raises(ConfigError, match=r"hardware.trapdoor_pin: GPIO12 is already used by hardware.chute_pin"):
        validate_pins(hw(**{"hardware.profile": "chute", "hardware.trapdoor_pin": 12}))
    with pytest.raises(ConfigError, match="GPIO5 has no hardware PWM"):
        validate_pins(hw(**{"hardware.profile": "chute", "hardware.chute_pin": 5}), require_hardware_pwm=True)
    with pytest.raises(ConfigError, match="led_pins\\[1\\]: GPIO40 does not exist"):
        validate_pins(hw(**{"hardware.led_pins": [5, 40]}))


def test_calibrate_moves_servos_and_saves_keeping_comments(factory, tmp_path):
    from ecosorter.edge.hardware.calibrate import calibrate

    path = tmp_path / "config.toml"
    path.write_text("# my bin in the canteen\n[hardware]\nprofile = \"chute\"  # rotating chute\n"
                    "settle_s = 0.01\n")
    cfg = load_config(path, {"hardware.pin_factory": "mock"}).hardware
    # c0 keep; c1 nudge +2, accept; c2 set -60, accept; c3..c6 keep; trapdoor closed -85; open 5
    answers = iter(["", "+", "", "-60", "", "", "", "", "", "-85", "", "5", ""])
    with make_actuator(cfg, 7, fallback=3, pin_factory=factory) as act:
        chute = factory.pin(12)
        assert calibrate(path, act, ask=lambda prompt: next(answers), say=lambda s: None)
        assert round(duty(-58), 4) in [round(s.state, 4) for s in chute.states]  # -60 nudged by +2
    text = path.read_text()
    assert "# my bin in the canteen" in text and "# rotating chute" in text
    saved = load_config(path, {"hardware.pin_factory": "mock"}).hardware
    assert saved.chute_angles == [-90.0, -58.0, -60.0, 0.0, 30.0, 60.0, 90.0]
    assert saved.trapdoor_closed_angle == -85.0 and saved.trapdoor_open_angle == 5.0
