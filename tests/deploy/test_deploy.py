"""deploy/: the unit files verify, the installer is clean and dry-runs, the example config is current."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecosorter.edge.config import Config, example_toml, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_example_config_is_generated_from_the_schema_and_valid():
    text = (DEPLOY / "config.example.toml").read_text()
    assert text == example_toml(), "run: ecosorter config example > deploy/config.example.toml"
    assert load_config(DEPLOY / "config.example.toml") == Config()


@pytest.mark.parametrize("unit", ["ecosorter.service", "kiosk.service"])
def test_units_pass_systemd_analyze_verify(tmp_path, unit):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (CI installs systemd)")
    text = (DEPLOY / unit).read_text()
    # verify checks that ExecStart exists: point it at this checkout's installed console script
    ecosorter = Path(sys.executable).with_name("ecosorter")
    text = text.replace("/opt/ecosorter/venv/bin/ecosorter", str(ecosorter))
    (tmp_path / unit).write_text(text)
    r = subprocess.run([exe, "verify", str(tmp_path / unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if unit == "ecosorter.service":
        for line in ("Type=notify", "WatchdogSec=", "Restart=always", "ProtectSystem=strict",
                     "ReadWritePaths=/var/lib/ecosorter", "NoNewPrivileges=yes", "PrivateTmp=yes",
                     "ProtectHome=yes", "SupplementaryGroups=gpio video i2c", "ExecStopPost=", "WatchdogSignal=SIGTERM"):
            assert line in text


@pytest.mark.parametrize("script", [DEPLOY / "install.sh", DEPLOY.parent / "tools" / "pi-check"], ids=lambda p: p.name)
def test_installer_is_shellcheck_clean(script):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (CI installs it)")
    r = subprocess.run([exe, str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_installer_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    r = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--dry-run", "--model", "m.tflite", "--allow-unsigned",
                        "--kiosk"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for expected in ("apt-get install -y --no-install-recommends python3-venv python3-pip python3-picamera2",
                     "-m venv --system-site-packages /opt/ecosorter/venv",
                     "install -m 0644", "config.example.toml /etc/ecosorter/config.toml",
                     "ecosorter model install m.tflite --config /etc/ecosorter/config.toml --state-dir "
                     "/var/lib/ecosorter --allow-unsigned", "systemctl enable --now ecosorter.service",
                     "/etc/systemd/user/ecosorter-kiosk.service", "systemctl --global enable ecosorter-kiosk.service",
                     "doctor --config /etc/ecosorter/config.toml",
                     # the example's bin_id on every bin of a fleet: each takes the others' connection over
                     "give this one its own bin_id in /etc/ecosorter/config.toml (now ecosorter-1)"):
        assert expected in out, expected
    u = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--uninstall", "--dry-run"], capture_output=True, text=True)
    assert u.returncode == 0 and "kept /etc/ecosorter and /var/lib/ecosorter" in u.stdout


def test_installer_rejects_unknown_options():
    r = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
    # a model is never installed unchecked by default: signed, or unsigned by an explicit choice
    r = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--dry-run", "--model", "m.tflite"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--model needs --model-signature SIG" in r.stderr


def installer(*args, machine: str | None = None, cwd=None):
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    if machine:
        env["ECOSORTER_UNAME_M"] = machine  # what `uname -m` would say on that board
    return subprocess.run(["bash", str(DEPLOY / "install.sh"), *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.mark.parametrize("machine", ["armv7l", "armv6l"])
def test_installer_refuses_32_bit_arm_before_changing_anything(machine):
    r = installer("--dry-run", machine=machine)
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"32-bit ARM system ({machine})" in r.stderr and "64-bit Raspberry Pi OS" in r.stderr
    assert "apt-get" not in r.stdout  # refused before the first step


def test_installer_on_aarch64_pwm_overlay_pca9685_and_no_systemd(tmp_path):
    r = installer("--dry-run", "--pwm-overlay", "--pca9685", "--no-systemd", machine="aarch64", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "EcoSorter Edge install: aarch64" in out
    assert "[edge,pca9685]" in out  # the PCA9685 library comes with the extra
    assert "dtoverlay=pwm-2chan,pin=12,func=4,pin2=13,func2=4 >> /boot" in out or "keeping the pwm-2chan overlay" in out
    assert "REBOOT NEEDED" in out or "keeping the pwm-2chan overlay" in out
    for unit_step in ("systemctl daemon-reload", "systemctl enable --now ecosorter.service"):
        assert f"+ {unit_step} (skipped: --no-systemd)" in out
    plain = installer("--dry-run", machine="aarch64", cwd=tmp_path).stdout
    assert "[edge]" in plain and "pca9685" not in plain and "REBOOT" not in plain
    assert "+ systemctl enable --now ecosorter.service\n" in plain
