"""Anti-rollback end to end: `ecosorter-convert --model-version` writes it, the bin refuses to go below it
except by root's explicit local `--allow-downgrade`."""

from __future__ import annotations

import pytest

from ecosorter.edge.cli import main
from ecosorter.edge.model.loader import load_model
from ecosorter.edge.model.store import ModelInstallError, ModelStore
from tests.conftest import DATA
from tests.security.conftest import DEMO, versioned_model


def test_convert_writes_the_version_and_the_store_refuses_lower_ones(tiny_h5, tmp_path, capsys):
    from ecosorter.convert.cli import main as convert_main

    out = tmp_path / "v4.tflite"
    assert convert_main([str(tiny_h5), "-o", str(out), "--quantize", "float32", "--validation", str(DATA),
                         "--quiet", "--model-version", "4"]) == 0
    with load_model(out) as m:
        assert m.manifest.version == 4
    assert convert_main([str(tiny_h5), "-o", str(tmp_path / "x.tflite"), "--quantize", "float32",
                         "--validation", str(DATA), "--quiet", "--model-version", "-1"]) == 2
    assert "--model-version -1: must be a whole number >= 0" in capsys.readouterr().err

    state = tmp_path / "state"
    store = ModelStore(state)
    assert store.install(out, allow_unsigned=True).version == 4 and store.running_version() == 4
    with pytest.raises(ModelInstallError, match="version 3 is older than the running version 4: downgrade refused"):
        store.install(versioned_model(tmp_path, 3), allow_unsigned=True)
    with pytest.raises(ModelInstallError, match="version 0 is older"):
        store.install(DEMO, allow_unsigned=True)
    assert store.running_version() == 4  # untouched
    # root on the bin can still go back, explicitly
    assert main(["model", "install", str(DEMO), "--allow-downgrade", "--allow-unsigned", "--state-dir", str(state)]) == 0
    assert store.running_version() == 0
