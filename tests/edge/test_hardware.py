"""Every actuator profile on gpiozero's MockFactory pins in virtual time: what each servo pin was
sent and when, asserted against the physics (travel = |delta angle| / speed, + settle)."""

from __future__ import annotations

import time

import pytest

from ecosorter.edge.clock import VirtualClock
from ecosorter.edge.config import load_config
from ecosorter.edge.errors import ConfigError
from ecosorter.edge.hardware import make_actuator, validate_pins
from ecosorter.edge.hardware.check import compartment_count
from ecosorter.edge.machine import Machine
from ecosorter.edge.simulate.pins import ClockedMockFactory, servo_angle
from tests.conftest import duty

SPEED = 300.0  # deg/s, the default


def hw(**overrides):
    return load_config(overrides={"hardware.pin_factory": "mock", **overrides}).hardware


class Rig:
    """An actuator from a config on clocked mock pins, with its machine."""

    def __init__(self, **overrides):
        self.clock = VirtualClock()
        self.pins = ClockedMockFactory(self.clock)
        self.cfg = hw(**overrides)
        self.machine = Machine(self.clock, self.cfg.resume_delay_s, self.cfg.interlock_resume)
        self.act = make_actuator(self.cfg, compartment_count(self.cfg), self.pins, self.machine, self.clock)

    def servo(self, pin: int) -> list[tuple[float, float | None]]:
        """(t, angle or None = detached) for every change of the servo pin."""
        c = self.cfg
        return [(round(t, 6), None if (a := servo_angle(v, c.min_pulse_width_ms, c.max_pulse_width_ms,
                                                       c.servo_min_angle, c.servo_max_angle)) is None else round(a, 3))
                for t, v in self.pins.pin(pin).timeline[1:]]


def test_chute_sequence_waits_for_travel_and_detaches_after_arrival():
    r = Rig(**{"hardware.profile": "chute"})
    settle = r.cfg.settle_s
    # parked at start: door closed from an unknown position (full-range travel), then the chute
    door, chute = r.servo(13), r.servo(12)
    assert door[0] == (0.0, -90.0) and chute[0][1] == 0.0
    assert chute[0][0] == pytest.approx(180 / SPEED + settle)  # chute only after the door's travel
    t0 = r.clock.monotonic()
    n_door, n_chute = len(door), len(chute)
    result = r.act.route(6)
    assert result.ok and result.compartment == 6 and not result.stopped
    door, chute = r.servo(13)[n_door:], r.servo(12)[n_chute:]
    # chute 0 -> 90 (door already known closed: no door move first)
    assert chute[0] == (pytest.approx(t0), 90.0)
    t_open = t0 + 90 / SPEED + settle
    assert door[0] == (pytest.approx(t_open), 0.0)  # opens only after the chute has arrived
    t_close = t_open + 90 / SPEED + settle + r.cfg.drop_s
    assert door[1] == (pytest.approx(t_close), -90.0)
    t_home = t_close + 90 / SPEED + settle
    assert chute[1] == (pytest.approx(t_home), 0.0)  # home only after the door's travel to closed
    t_detach = t_home + 90 / SPEED + settle
    assert chute[2] == (pytest.approx(t_detach), None) and door[2] == (pytest.approx(t_detach), None)


def test_flaps_open_only_the_items_flap():
    r = Rig(**{"hardware.profile": "flaps"})
    n = {p: len(r.servo(p)) for p in r.cfg.flap_pins}
    assert r.act.route(2).ok
    moved = {p: r.servo(p)[n[p]:] for p in r.cfg.flap_pins}
    assert [a for _, a in moved[r.cfg.flap_pins[2]]] == [0.0, -90.0, None]
    assert all(not v for p, v in moved.items() if p != r.cfg.flap_pins[2])


def test_flaps_park_one_at_a_time():
    r = Rig(**{"hardware.profile": "flaps"})
    starts = [r.servo(p)[0][0] for p in r.cfg.flap_pins]
    step = 180 / SPEED + r.cfg.settle_s
    assert starts == pytest.approx([i * step for i in range(7)])  # never seven stall currents at once


def test_leds_light_the_compartment_for_on_time():
    r = Rig(**{"hardware.profile": "leds", "hardware.led_on_s": 3.0, "hardware.buzzer_pin": 21})
    assert r.act.route(4).ok
    leds = [r.pins.pin(p) for p in r.cfg.led_pins]
    assert [p.state for p in leds] == [0, 0, 0, 0, 1, 0, 0]
    r.clock.sleep(2.9)
    r.act.tick()
    assert leds[4].state == 1 and r.pins.pin(21).state == 0  # the beep is short, the LED stays
    r.clock.sleep(0.1)  # exactly led_on_s after it lit
    r.act.tick()
    assert [p.state for p in leds] == [0] * 7
    assert leds[4].timeline[-2:] == [(0.0, 1.0), (pytest.approx(3.0), 0.0)]


def test_lid_open_means_no_movement_and_no_latch():
    r = Rig(**{"hardware.profile": "chute", "hardware.interlock_pin": 17})
    lid = r.pins.pin(17)
    lid.drive_high()  # pull-up: high = switch open = lid open
    n = len(r.servo(12))
    res = r.act.route(1)
    assert not res.ok and res.stopped == "lid" and r.machine.active("lid")
    assert all(a is None for _, a in r.servo(12)[n:])  # detached, never sent an angle
    lid.drive_low()
    r.machine.lid(False)
    assert not r.machine.active("lid") and r.machine.active("resume")  # a pause before motion
    r.clock.sleep(r.cfg.resume_delay_s)
    r.machine.lid(False)
    assert r.machine.may_move()
    assert r.act.route(1).ok  # nothing latched


def test_lid_opened_mid_move_detaches_at_once_and_nothing_moves_after():
    r = Rig(**{"hardware.profile": "chute", "hardware.interlock_pin": 17})
    lid = r.pins.pin(17)
    lid.drive_low()
    assert r.act.park()
    t0 = r.clock.monotonic()
    r.clock.call_at(t0 + 0.1, lid.drive_high)  # during the chute's travel
    res = r.act.route(5)
    assert not res.ok and res.stopped == "lid" and "chute move" in res.note
    after = [(t, a) for t, a in r.servo(12) + r.servo(13) if t >= t0 + 0.1]
    assert after and all(a is None for _, a in after)  # only detaches
    assert max(t for t, _ in after) <= t0 + 0.1 + 0.021  # within one wait slice
    assert not r.act.parked()  # the chute stopped somewhere unknown
    assert not r.act.park()  # lid still open: park only detaches


def test_safe_sequence_door_first_then_chute_each_waited_for():
    r = Rig(**{"hardware.profile": "chute"})
    r.act.chute.lost()
    r.act.trapdoor.lost()  # as if interrupted mid-move: positions unknown
    t0 = r.clock.monotonic()
    n13, n12 = len(r.servo(13)), len(r.servo(12))
    assert r.act.park()
    door, chute = r.servo(13)[n13:], r.servo(12)[n12:]
    full = 180 / SPEED + r.cfg.settle_s
    assert door[0] == (pytest.approx(t0), -90.0)
    assert chute[0] == (pytest.approx(t0 + full), 0.0)
    assert chute[1] == (pytest.approx(t0 + 2 * full), None) and door[1] == (pytest.approx(t0 + 2 * full), None)


class StallingClock(VirtualClock):
    """A process that gets less CPU than it asked for: while `stall` is set, every sleep overruns."""

    stall = 0.0

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds + self.stall)


def test_move_over_budget_is_a_fault_but_a_dropped_item_counts_as_routed():
    clock = StallingClock()
    clock.stall = 1.0
    pins = ClockedMockFactory(clock)
    cfg = hw(**{"hardware.profile": "chute", "hardware.move_budget_s": 1.0})  # longest move 0.95 s
    machine = Machine(clock)
    act = make_actuator(cfg, 7, pins, machine, clock)  # parking overruns at once
    assert machine.faulted and machine.active("budget")
    clock.stall = 0.0
    machine.clear_faults("test")
    assert act.park() and not machine.faulted
    t0 = clock.monotonic()
    t_dropping = t0 + (90 / SPEED + cfg.settle_s) * 2 + 0.1  # chute at -90, door open: during the drop
    clock.call_at(t_dropping, lambda: setattr(clock, "stall", 1.0))
    res = act.route(0)
    assert res.ok and res.stopped == "budget" and "trapdoor close took" in res.note  # in, then the fault
    assert machine.active("budget")


def test_position_switch_that_does_not_confirm_is_a_jam_and_the_door_stays_shut():
    r = Rig(**{"hardware.profile": "chute", "hardware.chute_home_switch_pin": 20,
               "hardware.trapdoor_closed_switch_pin": 21})
    home, shut = r.pins.pin(20), r.pins.pin(21)
    # at start the switches are open: parking cannot confirm -> jam
    assert r.machine.active("jam")
    r.machine.clear_faults("test")
    home.drive_low()
    shut.drive_low()  # both confirm now
    assert r.act.park() and not r.machine.faulted
    n = len(r.servo(13))
    res = r.act.route(5)  # the chute "moves" but its home switch stays closed: stuck at home
    assert not res.ok and res.stopped == "jam" and "chute did not leave" in res.note
    assert all(a in (None, -90.0) for _, a in r.servo(13)[n:])  # the trapdoor never opened


def test_a_servo_error_is_a_fault_not_a_crash():
    r = Rig(**{"hardware.profile": "chute"})
    r.act.chute.servo.close()  # gpiozero itself then fails on every command, as a released pin would
    res = r.act.route(2)
    assert not res.ok and res.stopped == "servo" and "chute -> -30 deg" in res.note and r.machine.faulted
    assert [a for _, a in r.servo(13)][-1] is None  # the trapdoor was detached, not left powered


def test_every_exit_path_leaves_servos_home_and_detached():
    r = Rig(**{"hardware.profile": "chute"})
    with pytest.raises(RuntimeError), r.act:
        r.act.chute.servo.angle = 45  # as if a stage crashed mid-move
        r.act.chute.lost()
        raise RuntimeError("a stage crashed")
    assert [a for _, a in r.servo(13)][-2:] == [-90.0, None]
    assert [a for _, a in r.servo(12)][-2:] == [0.0, None]


def test_status_led_shows_states():
    r = Rig(**{"hardware.profile": "leds", "hardware.status_led_pins": [23, 24, 25]})
    assert r.act.status_led.color == (0, 1, 0)
    r.act.route(1, uncertain=True)
    assert r.act.status_led.color == (1, 0.5, 0)
    r.act.close()
    assert [r.pins.pin(p).state for p in (23, 24, 25)] == [0, 0, 0]


def test_config_checked_as_a_machine_all_errors_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(overrides={
            "hardware.profile": "chute", "hardware.trapdoor_pin": 12,
            "hardware.chute_angles": [-90.0, -45.0, 0.0, 45.0, 90.0], "hardware.trapdoor_open_angle": 120.0,
            "hardware.settle_s": 2.0, "hardware.status_led_pins": [23, 24], "hardware.full_sensor_pins": {"9": 22},
            "hardware.interlock_resume": "button"})
    text = str(e.value)
    for expected in ("trapdoor_pin: GPIO12 is already used by hardware.chute_pin",
                     "chute_angles: 5 given for 7 compartments", "trapdoor_open_angle: 120 deg is outside",
                     "move_budget_s: 2 s is below the longest move", "status_led_pins: 2 pins",
                     "full_sensor_pins.9: no compartment", "interlock_resume: 'button' needs"):
        assert expected in text, expected
    assert text.startswith("config: 7 problems")
    with pytest.raises(ConfigError, match="GPIO2 is already used by I2C SDA"):
        load_config(overrides={"hardware.profile": "pca9685", "hardware.interlock_pin": 2})
    with pytest.raises(ConfigError, match="led_pins\\[1\\]: GPIO40 does not exist"):
        validate_pins(hw(**{"hardware.led_pins": [5, 40, 6, 7, 8, 9, 10]}))


def test_soft_pwm_pins_warned():
    from ecosorter.edge.hardware.check import machine_warnings

    cfg = load_config(overrides={"hardware.profile": "chute", "hardware.chute_pin": 5})
    assert any("no hardware PWM on hardware.chute_pin (GPIO5)" in w for w in machine_warnings(cfg))


# closing the sensor while its sampling thread fires the trigger must not kill that thread with an exception
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_ultrasonic_present_means_near_with_real_echo_timing():
    """gpiozero's DistanceSensor measures the echo pulse; an item at 10 cm is present, 72 cm is not."""
    from gpiozero.pins.mock import MockFactory, MockTriggerPin

    from ecosorter.edge.hardware.inputs import Inputs

    def reading(distance_m: float) -> bool:
        f = MockFactory()
        echo = f.pin(24)
        f.pin(23, pin_class=MockTriggerPin, echo_pin=echo, echo_time=distance_m * 2 / 343.26)
        cfg = hw(**{"hardware.item_sensor_pin": 24, "hardware.item_sensor_trigger_pin": 23,
                    "hardware.item_sensor_kind": "ultrasonic", "hardware.item_sensor_distance_m": 0.3})
        inputs = Inputs(cfg, f)
        try:
            deadline = time.monotonic() + 10
            while inputs.item_sensor.value in (None, 1.0) and time.monotonic() < deadline:
                time.sleep(0.05)  # the sensor's queue fills from real echo pulses
            time.sleep(0.5)
            # The mock's echo is timed by a real thread: on a loaded machine it only ends late, which reads
            # farther (1 ms late is 17 cm), and the median of 9 can be late for a while. So a near item is
            # read until it is present (a limit for a broken sensor only); far never reads nearer.
            present = inputs.item_present()
            while not present and distance_m < cfg.item_sensor_distance_m and time.monotonic() < deadline + 30:
                time.sleep(0.05)
                present = inputs.item_present()
            return present
        finally:
            inputs.close()

    assert reading(0.10) is True
    assert reading(0.72) is False
    # unplugged (no echo ever): "nothing there" at once, never a loop blocked on the sensor
    f = MockFactory()
    cfg = hw(**{"hardware.item_sensor_pin": 24, "hardware.item_sensor_trigger_pin": 23,
                "hardware.item_sensor_kind": "ultrasonic"})
    inputs = Inputs(cfg, f)
    try:
        t0 = time.monotonic()
        assert inputs.item_present() is False and time.monotonic() - t0 < 1.0
    finally:
        inputs.close()


def test_calibrate_moves_servos_and_saves_keeping_comments(tmp_path):
    from ecosorter.edge.hardware.calibrate import calibrate

    path = tmp_path / "config.toml"
    path.write_text("# my bin in the canteen\n[hardware]\nprofile = \"chute\"  # rotating chute\n"
                    "settle_s = 0.01\nservo_speed_deg_s = 3000.0\n")
    cfg = load_config(path, {"hardware.pin_factory": "mock"}).hardware
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=MockPWMPin)
    # c0 keep; c1 nudge +2, accept; c2 set -60, accept; c3..c6 keep; trapdoor closed -85; open 5
    answers = iter(["", "+", "", "-60", "", "", "", "", "", "-85", "", "5", ""])
    with make_actuator(cfg, 7, pin_factory=factory) as act:
        chute = factory.pin(12)
        assert calibrate(path, act, ask=lambda prompt: next(answers), say=lambda s: None)
        assert round(duty(-58), 4) in [round(s.state, 4) for s in chute.states]  # -60 nudged by +2
    text = path.read_text()
    assert "# my bin in the canteen" in text and "# rotating chute" in text
    saved = load_config(path, {"hardware.pin_factory": "mock"}).hardware
    assert saved.chute_angles == [-90.0, -58.0, -60.0, 0.0, 30.0, 60.0, 90.0]
    assert saved.trapdoor_closed_angle == -85.0 and saved.trapdoor_open_angle == 5.0


def test_fill_sensor_must_hold_its_reading_before_it_counts():
    clock = VirtualClock()
    m = Machine(clock, fill_confirm_s=2.0)
    sensors = {4}
    for _ in range(5):  # an item falling past the beam: full for 0.3 s, five times
        m.fill({4}, sensors)
        clock.sleep(0.3)
        m.fill(set(), sensors)
        clock.sleep(0.5)
    assert not m.active("full", 4)
    m.fill({4}, sensors)
    assert m.wake_at() == pytest.approx(clock.monotonic() + 2.0)
    clock.sleep(1.9)
    m.fill({4}, sensors)
    assert not m.active("full", 4)
    clock.sleep(0.1)
    m.fill({4}, sensors)
    assert m.active("full", 4) and not m.may_move(4) and m.may_move(3)  # only its own items wait
    m.fill(set(), sensors)  # emptied: cleared once it has read empty for 2 s
    clock.sleep(2.0)
    m.fill(set(), sensors)
    assert not m.active("full", 4)
