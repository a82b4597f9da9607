"""The service unit's sandbox: `systemd-analyze security` exposure, printed and held at or below 2.5."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
LIMIT = 2.5


def test_systemd_exposure_is_at_most_2_5_with_gpio_camera_and_i2c_devices_allowed(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (CI installs systemd)")
    text = (DEPLOY / "ecosorter.service").read_text()
    for device in ("char-gpiochip rw", "char-video4linux rw", "char-media rw", "char-i2c rw"):
        assert f"DeviceAllow={device}" in text  # hardened, but the bin's own hardware still reachable
    assert "SupplementaryGroups=gpio video i2c" in text and "DevicePolicy=closed" in text
    unit = tmp_path / "ecosorter.service"
    unit.write_text(text.replace("/opt/ecosorter/venv/bin/ecosorter", str(Path(sys.executable).with_name("ecosorter"))))
    r = subprocess.run([exe, "security", "--offline=true", str(unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for ecosorter\.service: ([0-9.]+) (\w+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    print(f"\nsystemd-analyze security deploy/ecosorter.service: {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= LIMIT, r.stdout
