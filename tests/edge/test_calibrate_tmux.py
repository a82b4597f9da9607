"""`ecosorter calibrate` as a person at a terminal uses it: the real command in a real terminal
(tmux), gpiozero's mock pins, keys typed one line at a time, the config saved with its comments."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ecosorter.edge.config import load_config

ECOSORTER = Path(sys.executable).parent / "ecosorter"
CONFIG = """# the canteen bin, level 2
[hardware]
profile = "chute"  # rotating chute
pin_factory = "mock"
settle_s = 0.01
servo_speed_deg_s = 3000.0
compartment_names = ["A", "B", "C", "D", "E", "F", "Sisa"]
"""


class Terminal:
    def __init__(self, command: list[str], cwd: Path):
        if shutil.which("tmux") is None:
            pytest.skip("tmux not installed (apt-get install tmux; CI installs it)")
        if not ECOSORTER.exists():
            pytest.skip("ecosorter is not installed in this environment")
        self.name = f"ecosorter-test-{uuid.uuid4().hex[:8]}"
        # one shell line: the exit status stays on the screen after the command ends
        line = f"{shlex.join(command)}; echo EXIT=$?; sleep 60"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", "-c", str(cwd), line],
                       check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-S", "-200", "-t", self.name], capture_output=True,
                              text=True, check=True).stdout

    def wait_for(self, text: str, count: int = 1, timeout: float = 60) -> str:
        """Poll the screen (tmux drops trailing spaces: a prompt is matched without its last space)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} (x{count}) never appeared:\n{self.screen()}")

    def type(self, line: str) -> None:
        if line:
            subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", "--", line], check=True)
        subprocess.run(["tmux", "send-keys", "-t", self.name, "Enter"], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_calibrate_wizard_in_a_terminal(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    # tmux runs the command through a shell: keep the mock pins and quiet logs in its environment
    term = Terminal(["env", "GPIOZERO_PIN_FACTORY=mock", str(ECOSORTER), "calibrate", "--config", str(config)],
                    tmp_path)
    try:
        term.wait_for("compartment A: -90 deg >")
        assert "enter = keep, a number = set the angle" in term.screen()
        term.type("+")  # nudge: the chute moves 2 degrees, and asks again
        term.wait_for("compartment A: -88 deg >")
        term.type("")
        term.wait_for("compartment B: -60 deg >")
        term.type("left")  # not an answer: the keys are explained again
        term.wait_for("'left'? enter = keep")
        term.type("-55")
        term.wait_for("compartment B: -55 deg >")
        term.type("")
        for name in ("C", "D", "E", "F", "Sisa"):  # named as printed on the bin
            term.wait_for(f"compartment {name}: ")
            term.type("")
        term.wait_for("trapdoor closed: -90 deg >")
        term.type("120")  # outside the servo's range: refused with the keys that set it
        term.wait_for("angles are -90..90 (hardware.servo_min_angle / servo_max_angle)")
        term.type("-85")
        term.wait_for("trapdoor closed: -85 deg >")
        term.type("")
        term.wait_for("trapdoor open: 0 deg >")
        term.type("")
        screen = term.wait_for("EXIT=")
    finally:
        term.close()
    assert f"saved into {config}" in screen and "EXIT=0" in screen, screen
    assert "Traceback" not in screen and "XNNPACK" not in screen
    text = config.read_text()
    assert "# the canteen bin, level 2" in text and "# rotating chute" in text
    saved = load_config(config).hardware
    assert saved.chute_angles == [-88.0, -55.0, -30.0, 0.0, 30.0, 60.0, 90.0]
    assert saved.trapdoor_closed_angle == -85.0 and saved.trapdoor_open_angle == 0.0


def test_quitting_saves_nothing(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    term = Terminal(["env", "GPIOZERO_PIN_FACTORY=mock", str(ECOSORTER), "calibrate", "--config", str(config)],
                    tmp_path)
    try:
        term.wait_for("compartment A: -90 deg >")
        term.type("q")
        screen = term.wait_for("EXIT=")
    finally:
        term.close()
    assert "EXIT=1" in screen and "saved" not in screen
    assert config.read_text() == CONFIG
