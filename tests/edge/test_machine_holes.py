"""Issue 18, "the machine": unit-level regression tests (the scenarios are in tests/scenarios)."""

from __future__ import annotations

import pytest

from ecosorter.edge.clock import VirtualClock
from ecosorter.edge.machine import Machine


@pytest.mark.parametrize("since", [7.2, 0.1, 3.3, 1e5 + 0.7])
def test_a_fill_hold_is_raised_at_the_instant_wake_at_names(since):
    """#18.7: wake_at() said 9.2 s, but `9.2 - 7.2 >= 2.0` is False in floats: the simulator skipped
    to its next event (30 s) and the hold came late. Raised at exactly the instant it names."""
    clock = VirtualClock(start=since)
    m = Machine(clock, fill_confirm_s=2.0)
    m.fill({4}, {4})
    due = m.wake_at()
    assert due is not None
    clock.advance_to(due)
    m.fill({4}, {4})
    assert m.active("full", 4)


def _import_graph() -> dict[str, set[str]]:
    """ecosorter.edge module -> the ecosorter.edge modules it imports when run (top level or inside
    functions; `if TYPE_CHECKING:` blocks are not run). Importing a.b.c runs package a.b's __init__ too."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "edge"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        parts = ["ecosorter", "edge", *rel.parts]
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for b in node.body for n in ast.walk(b)}
        out: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                bits = t.split(".")
                out |= {".".join(bits[:i]) for i in range(3, len(bits) + 1)}
        graph[name] = out
    return {k: {t for t in v if t in graph and t != k} for k, v in graph.items()}


def test_no_import_circle_through_the_config():
    """The house: edge.config -> hardware.check -> hardware.pins -> edge.config was a circle (held
    together by an import inside a function). Nothing edge.config runs may import edge.config back."""
    graph = _import_graph()
    start = "ecosorter.edge.config"
    stack, seen, back = [(start, [start])], set(), []
    while stack:
        mod, path = stack.pop()
        for nxt in graph.get(mod, ()):
            if nxt == start:
                back.append(" -> ".join([*path, nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    assert "ecosorter.edge.hardware.check" in seen  # the rules are still run
    assert not back, "import circle: " + "; ".join(back)


def _cli(args: list[str], **env) -> tuple[int, str, str]:
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ecosorter.edge.cli", *args], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **env})
    return r.returncode, r.stdout, r.stderr


def test_config_check_reports_schema_machine_and_label_problems_in_one_report(tmp_path):
    """#18.8: one run of `config check` lists the schema's, the machine's and the labels' problems."""
    path = tmp_path / "config.toml"
    path.write_text('[hardware]\nprofile = "chute"\nservo_speed_deg_s = "fast"\ntrapdoor_pin = 12\n'
                    'compartments = { kaca = 0, kardus = 1, kertas = 2, khusus = 3, logam = 4, organik = 5, '
                    'plastic = 6 }\n[decision]\nfallback = "sampah"\n')
    code, out, err = _cli(["config", "check", str(path)])
    assert code == 2 and "Traceback" not in err
    for expected in ("hardware.servo_speed_deg_s: must be a number",  # the schema
                     "hardware.trapdoor_pin: GPIO12 is already used by hardware.chute_pin",  # the machine
                     "hardware.compartments.plastic: not a label of the model",  # the labels
                     "decision.fallback: 'sampah' is not a label"):
        assert expected in err, (expected, err)
    assert "config: 5 problems" in err  # + "no compartment for plastik"


def test_config_check_and_run_refuse_the_same_readable_password_file(tmp_path):
    """#18.8: a 0644 password_file was "valid" in `config check` and fatal in `run`."""
    import os

    secret = tmp_path / "mqtt_password"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o644)
    path = tmp_path / "config.toml"
    path.write_text(f'[mqtt]\nenabled = true\npassword_file = "{secret}"\n[record]\nstate_dir = "{tmp_path / "state"}"\n'
                    f'[camera]\nsource = "folder"\ndevice = "{tmp_path}"\n[hardware]\npin_factory = "mock"\n')
    env = {"CREDENTIALS_DIRECTORY": ""}
    for args in (["config", "check", str(path)], ["run", "--config", str(path), "--no-status"]):
        code, out, err = _cli(args, **env)
        assert code == 2, (args, out, err)
        assert "mqtt.password_file" in err and "mode 0644; readable by others" in err, (args, err)
    os.chmod(secret, 0o600)
    code, out, err = _cli(["config", "check", str(path)], **env)
    assert code == 0 and "valid" in out, err


def _board(tmp_path, model: str, pwm_channels: int | None):
    from pathlib import Path

    root = Path(tmp_path) / "root"
    (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
    (root / "proc/device-tree/model").write_bytes(model.encode() + b"\0")
    if pwm_channels is not None:
        chip = root / "sys/class/pwm/pwmchip0"
        chip.mkdir(parents=True, exist_ok=True)
        (chip / "npwm").write_text(f"{pwm_channels}\n")
    return root


def test_pi5_gpiozero_servos_are_switched_to_hardware_pwm_or_refused(tmp_path):
    """#18.9: on a Pi 5, gpiozero servos on lgpio land in ~18 deg steps. With the overlay and PWM
    pins, sysfs-pwm is chosen (and said); without, `run` and `config check` refuse, saying why."""
    from ecosorter.edge.config import load_config
    from ecosorter.edge.preflight import preflight

    chute = {"hardware.profile": "chute"}  # chute_pin 12, trapdoor_pin 13: PWM channels 0 and 1
    pi5 = _board(tmp_path / "a", "Raspberry Pi 5 Model B Rev 1.0", 2)
    cfg, errors, notes = preflight(load_config(overrides=chute), None, pi5)
    assert not errors and cfg.hardware.servo_driver == "sysfs-pwm"
    assert "using 'sysfs-pwm' (pwmchip0, 2 channels) instead of 'gpiozero'" in notes[0] and "~18 deg" in notes[0]

    no_overlay = _board(tmp_path / "b", "Raspberry Pi 5 Model B Rev 1.0", None)
    cfg, errors, _ = preflight(load_config(overrides=chute), None, no_overlay)
    assert cfg.hardware.servo_driver == "gpiozero" and errors[0].key == "hardware.servo_driver"
    assert "~18 deg" in str(errors[0]) and "pwm-2chan" in str(errors[0])

    soft_pin = {**chute, "hardware.chute_pin": 5}
    _, errors, _ = preflight(load_config(overrides=soft_pin), None, pi5)
    assert "hardware.chute_pin = 5 has no hardware PWM channel" in str(errors[0])

    pi4 = _board(tmp_path / "c", "Raspberry Pi 4 Model B Rev 1.5", None)  # pigpio-quality PWM: left alone
    cfg, errors, notes = preflight(load_config(overrides=chute), None, pi4)
    assert (cfg.hardware.servo_driver, errors, notes) == ("gpiozero", [], [])
    explicit = {**chute, "hardware.servo_driver": "pca9685"}
    assert preflight(load_config(overrides=explicit), None, pi5)[1:] == ([], [])


def test_calibrate_measures_each_servos_feedback_and_arrival_is_checked_against_it(tmp_path):
    """#18.2: `ecosorter calibrate` reads each servo's potentiometer (MCP3008 on gpiozero's mock
    SPI) at every accepted position and saves its readings at the ends of the span; the saved
    config loads, and a servo then read off its target is a jam before the door opens."""
    from ecosorter.edge.config import load_config
    from ecosorter.edge.hardware import make_actuator
    from ecosorter.edge.hardware.calibrate import calibrate
    from ecosorter.edge.simulate.adc import SimMCP3008
    from ecosorter.edge.simulate.pins import ClockedMockFactory, servo_angle

    path = tmp_path / "config.toml"
    path.write_text('[hardware]\nprofile = "chute"\nsettle_s = 0.01\nservo_speed_deg_s = 3000.0\n'
                    'feedback_adc = "mcp3008"\nfeedback_channels = [3, 5]\n')
    cfg = load_config(path, {"hardware.pin_factory": "mock"}).hardware
    clock = VirtualClock()
    pins = ClockedMockFactory(clock)
    stuck: dict[int, float] = {}

    def pot(pin: int, v0: float, v1: float):  # the true potentiometer: where the pin sent the servo
        def read() -> float:
            a = stuck.get(pin, servo_angle(pins.pin(pin).state, 0.5, 2.5, -90.0, 90.0))
            return 0.5 if a is None else v0 + (a + 90.0) / 180.0 * (v1 - v0)
        return read

    SimMCP3008({3: pot(12, 0.2, 0.8), 5: pot(13, 0.85, 0.15)}, pins)  # the door's pot is wired the other way
    answers = iter(["", "", "", "", "", "", "", "", ""])
    with make_actuator(cfg, 7, pin_factory=pins, clock=clock) as act:
        assert calibrate(path, act, ask=lambda prompt: next(answers), say=lambda s: None)
    saved = load_config(path, {"hardware.pin_factory": "mock"}).hardware
    assert saved.feedback_at_min == pytest.approx([0.2, 0.85], abs=0.002)
    assert saved.feedback_at_max == pytest.approx([0.8, 0.15], abs=0.002)

    machine = Machine(clock)
    before = len(pins.pin(13).timeline)
    with make_actuator(saved, 7, pin_factory=pins, machine=machine, clock=clock) as act:
        assert act.route(5).ok  # 60 deg, read at 60: it goes
        stuck[12] = 20.0  # the chute stops at 20 deg from now on
        result = act.route(2)  # -30 deg
        assert not result.ok and result.stopped == "jam" and "read at 20 deg, not -30 deg" in result.note
        door = [round(servo_angle(v, 0.5, 2.5, -90.0, 90.0) or 999) for _, v in pins.pin(13).timeline[before:]]
        assert door.count(0) == 1  # the door opened for the first item only


@pytest.mark.parametrize("overrides, expected", [
    ({"hardware.feedback_channels": [0]}, "hardware.feedback_channels: [0]: one distinct MCP3008 channel 0-7 for each of the 2"),
    ({"hardware.feedback_at_min": [0.1, 0.1], "hardware.feedback_at_max": [0.9]}, "hardware.feedback_at_min: 2 and 1"),
    ({"hardware.feedback_at_min": [0.5, 0.1], "hardware.feedback_at_max": [0.51, 0.9]}, "hardware.feedback_at_min[0]: 0.5 .. 0.51"),
    ({"hardware.interlock_pin": 8}, "hardware.interlock_pin: GPIO8 is already used by SPI CE0 (feedback_adc mcp3008)"),
    ({"hardware.profile": "leds"}, "hardware.feedback_adc: only the servo profiles"),
])
def test_feedback_config_mistakes_name_their_key(overrides, expected):
    from ecosorter.edge.config import load_config
    from ecosorter.edge.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(overrides={"hardware.profile": "chute", "hardware.feedback_adc": "mcp3008", **overrides})
    assert expected in str(e.value)


def test_the_simulated_adc_keeps_no_pin_history():
    """#18.7: polling feedback through gpiozero's mock SPI kept 50 pin levels per conversion (a
    week grew ~48 MB a day); the simulated MCP3008 keeps only the last."""
    import gpiozero

    from ecosorter.edge.hardware.factory import _adc
    from ecosorter.edge.simulate.adc import SimMCP3008
    from ecosorter.edge.simulate.pins import ClockedMockFactory

    pins = ClockedMockFactory(VirtualClock(), history=False)
    chip = SimMCP3008({2: lambda: 0.25}, pins)
    adc = _adc(lambda cls, *a, **k: cls(*a, pin_factory=pins, **k), pins, 2)
    try:
        values = [adc.value for _ in range(200)]
        assert values[-1] == pytest.approx(0.25, abs=0.002) and chip.conversions == 200
        assert all(len(p.states) <= 60 for p in pins.pins.values())  # one conversion's worth at most
        assert gpiozero.Device.pin_factory is None  # lent for construction only
    finally:
        adc.close()
        chip.close()
