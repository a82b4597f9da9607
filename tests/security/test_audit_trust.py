"""Audit of issue 21 with other signatures than the engineers': another model's good signature,
a signature file that never ends, a text (base64) signature. Real ed25519 keys, the real CLI."""

from __future__ import annotations

import base64
import os
import resource
import subprocess
import sys

import pytest

from ecosorter.edge.cli import main
from ecosorter.edge.security import new_keypair, sign_file
from tests.security.conftest import DEMO, versioned_model
from tests.security.test_model_trust import install, write_config


@pytest.fixture(autouse=True)
def no_system_config(tmp_path, monkeypatch):
    monkeypatch.setattr("ecosorter.edge.config.DEFAULT_PATH", tmp_path / "etc-ecosorter-config.toml")


@pytest.fixture(scope="module")
def keys():
    return new_keypair()


def test_a_good_signature_of_another_model_is_refused(tmp_path, capsys, keys):
    config = write_config(tmp_path, f'public_keys = ["{keys[1]}"]')
    v1, v2 = versioned_model(tmp_path, 1), versioned_model(tmp_path, 2)
    (tmp_path / "v1.sig").write_bytes(sign_file(keys[0], v1.read_bytes()))
    assert install(v2, "--config", config, "--signature", tmp_path / "v1.sig") == 2
    assert "does not verify with any configured key" in capsys.readouterr().err
    assert not (tmp_path / "state" / "models" / "current.tflite").exists()


def test_a_text_signature_is_named_as_the_wrong_format(tmp_path, capsys, keys):
    config = write_config(tmp_path, f'public_key = "{keys[1]}"')
    sig = tmp_path / "demo.sig.b64"
    sig.write_bytes(base64.b64encode(sign_file(keys[0], DEMO.read_bytes())) + b"\n")
    assert install(DEMO, "--config", config, "--signature", sig) == 2
    err = capsys.readouterr().err
    assert f"--signature {sig}: more than 64 bytes" in err and "64 raw bytes" in err
    (tmp_path / "empty.sig").write_bytes(b"")
    assert install(DEMO, "--config", config, "--signature", tmp_path / "empty.sig") == 2
    assert "0 bytes" in capsys.readouterr().err


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_a_signature_file_that_never_ends_is_refused_not_read(tmp_path, keys):
    """`--signature /dev/zero` (a slip of the shell) read until memory ran out: a MemoryError
    traceback under a 1 GB limit, the OOM killer without one."""
    config = write_config(tmp_path, f'public_key = "{keys[1]}"')
    r = subprocess.run([sys.executable, "-m", "ecosorter.edge.cli", "model", "install", str(DEMO), "--config",
                        str(config), "--signature", "/dev/zero"], capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_memory, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 2, r.stderr[-800:]
    assert "--signature /dev/zero: more than 64 bytes" in r.stderr and "Traceback" not in r.stderr
    assert main(["model", "list", "--config", str(config)]) == 0
