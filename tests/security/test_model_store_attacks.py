"""Hostile or broken models against the store and the bin: a store copy swapped on disk (a file or a
link), a `verified` flag of the wrong type, a model whose thresholds cannot keep the bin's
`[decision]` budget. Real models in LiteRT, the real store, the real sorter."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest

from ecosorter.convert.embed import embed_metadata
from ecosorter.edge.config import load_config
from ecosorter.edge.errors import EcoSorterError, ModelError
from ecosorter.edge.model.loader import load_model, read_manifest
from ecosorter.edge.model.store import ModelStore
from ecosorter.edge.model.trust import ModelInstallError
from ecosorter.edge.sorter import build_sorter
from tests.conftest import SAMPLES
from tests.security.conftest import DEMO, sha, versioned_model

LABELS = read_manifest(DEMO.read_bytes()).label_ids


def cfg_for(state: Path, **over):
    return load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                  "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                  "record.state_dir": str(state), **over})


def remanifest(out: Path, **change) -> Path:
    """The demo model with its manifest changed (`verification`, `decision`, `version`), a real model."""
    content = DEMO.read_bytes()
    m = dataclasses.replace(read_manifest(content), **change)
    out.write_bytes(embed_metadata(content, m.to_json()))
    return out


def raw_manifest(out: Path, patch) -> Path:
    """The demo model with its manifest JSON edited by `patch(dict)`, bypassing every check on the way."""
    import json

    content = DEMO.read_bytes()
    d = read_manifest(content).to_dict()
    patch(d)
    out.write_bytes(embed_metadata(content, json.dumps(d).encode()))
    return out


@pytest.mark.parametrize("plant", ["file", "link"])
def test_reinstalling_a_model_repairs_a_store_copy_changed_on_disk(tmp_path, plant):
    """A store copy changed on disk is refused at load (e-data's check); installing the right model
    again must then write it again, not say `ok` and leave the bin unable to load it."""
    store = ModelStore(tmp_path / "state")
    v3 = versioned_model(tmp_path, 3)
    store.install(v3, allow_unsigned=True)
    copy = store.dir / f"sha-{sha(v3)}.tflite"
    other = versioned_model(tmp_path, 4)
    copy.unlink()
    if plant == "file":
        copy.write_bytes(other.read_bytes())
    else:
        os.symlink(other, copy)
    with pytest.raises(ModelError):
        load_model(store.current).close()
    store.install(v3, allow_unsigned=True)
    assert not copy.is_symlink() and sha(copy) == sha(v3)
    load_model(store.current).close()


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], {}], ids=repr)
def test_a_verified_flag_of_the_wrong_type_is_refused_naming_it(tmp_path, value):
    """`verified` is the converter's gate: a string "false" (whose figures pass) must not read as passed."""
    bad = raw_manifest(tmp_path / "m.tflite", lambda d: d["verification"].update(verified=value))
    if value is None:  # JSON null: as if absent (a manifest from before the flag), judged by its figures
        ModelStore(tmp_path / "s").install(bad, allow_unsigned=True)
        return
    with pytest.raises(ModelInstallError, match="verification.verified"):
        ModelStore(tmp_path / "s").install(bad, allow_unsigned=True)


def decision(budget: float, t: float = 0.6) -> dict:
    return {"temperature": 1.0, "budget": budget, "thresholds": dict.fromkeys(LABELS, t)}


@pytest.mark.parametrize("new_decision", [None, decision(0.05)], ids=["no-thresholds", "looser-budget"])
def test_a_model_that_cannot_keep_the_bins_budget_is_refused_at_install_not_at_the_next_start(tmp_path,
                                                                                               new_decision):
    """The bin's `decision.contamination_budget = 0.02`: a model without thresholds for it was installed
    (the live swap refused it), and the bin then could not start at all (ConfigError at every restart)."""
    state = tmp_path / "state"
    cfg = cfg_for(state, **{"decision.contamination_budget": 0.02})
    store = ModelStore.from_config(cfg)
    store.install(remanifest(tmp_path / "a.tflite", version=2, decision=decision(0.02)), allow_unsigned=True)
    with build_sorter(cfg) as sorter:
        assert sorter.voter.rule.budget == 0.02
    b = remanifest(tmp_path / "b.tflite", version=3, decision=new_decision)
    with pytest.raises(ModelInstallError, match="decision.contamination_budget"):
        store.install(b, allow_unsigned=True)
    with build_sorter(cfg) as sorter:  # still starts, on the model that keeps the budget
        assert sorter.model.sha256 == sha(tmp_path / "a.tflite")


@pytest.mark.parametrize("patch", [
    lambda d: d.update(decision={**decision(0.02), "temperature": float("nan")}),
    lambda d: d.update(decision={**decision(0.02), "temperature": -1}),
    lambda d: d.update(decision={**decision(0.02), "thresholds": {**dict.fromkeys(LABELS, 0.5), "kaca": float("inf")}}),
    lambda d: d.update(decision={**decision(0.02), "thresholds": {**dict.fromkeys(LABELS, 0.5), "nope": 0.5}}),
    lambda d: d.update(decision={**decision(0.02), "ladder": [{"budget": 0.01, "thresholds": {"kaca": 0.5}}]}),
    lambda d: d.update(decision={**decision(0.02), "ladder": [decision(0.01)] * 1000}),
    lambda d: d.update(decision={**decision(0.02), "ladder": [decision(0.01)] * 20_000}),
    lambda d: d["verification"].update(notes="x" * (2 << 20)),
], ids=["nan-temperature", "negative-temperature", "inf-threshold", "unknown-label", "short-ladder", "long-ladder",
        "huge-manifest", "huge-verification"])
def test_hostile_decision_blocks_and_huge_manifests_are_refused_at_install(tmp_path, patch):
    bad = raw_manifest(tmp_path / "m.tflite", patch)
    with pytest.raises(EcoSorterError, match="decision|manifest is [0-9]+ bytes"):
        ModelStore(tmp_path / "s").install(bad, allow_unsigned=True)


@pytest.mark.parametrize("figures", [{"n_certify": 0, "mean_confidence": 0.9, "confidence_sd": 0.1},
                                     {"n_certify": -5, "mean_confidence": 0.9, "confidence_sd": 0.1},
                                     {"fallback_share": float("nan"), "top1_error": float("inf"),
                                      "mean_confidence": 1e308, "confidence_sd": -1.0}],
                         ids=["n-zero", "n-negative", "non-finite"])
def test_a_models_figures_cannot_break_the_drift_watch(tmp_path, caplog, figures):
    """The drift watch compares the bin with the figures in the model's `decision` block: figures no
    conversion writes (n = 0, NaN) must be left out, not fail the watch on every item."""
    import logging

    state = tmp_path / "state"
    cfg = cfg_for(state, **{"camera.loop": True})
    model = raw_manifest(tmp_path / "m.tflite", lambda d: d.update(decision={**decision(0.02, 0.3), **figures}))
    ModelStore.from_config(cfg).install(model, allow_unsigned=True)
    with caplog.at_level(logging.ERROR), build_sorter(cfg) as sorter:
        sorter.run(max_items=60)
        assert sorter.summary.items == 60
        assert all(math.isfinite(v) for v in sorter.drift.expected.values())
    assert "drift watch failed" not in caplog.text


@pytest.mark.parametrize("plant", ["link-outside", "plain-file"])
def test_current_tflite_pointed_outside_the_store_is_refused_and_the_bin_rolls_back(tmp_path, plant):
    """current.tflite is the store's link to a checked sha-<hash>.tflite copy: re-pointed at a file
    elsewhere (or replaced by a file) it would load a model nobody checked, shown only as UNSIGNED."""
    state = tmp_path / "state"
    store = ModelStore(state)
    store.install(DEMO, allow_unsigned=True)
    store.install(versioned_model(tmp_path, 3), allow_unsigned=True)
    other = versioned_model(tmp_path, 4)
    store.current.unlink()
    if plant == "link-outside":
        os.symlink(other, store.current)
    else:
        store.current.write_bytes(other.read_bytes())
    with build_sorter(cfg_for(state)) as sorter:
        assert sorter.model.sha256 == sha(DEMO)
        assert "rolled back" in sorter.board.snapshot()["health"]["model"]["detail"]


def test_model_list_does_not_write_a_manifests_terminal_escapes(tmp_path):
    """`ecosorter model list` prints the manifest's source fields: a model's own text must not drive the
    operator's terminal (retitle it, clear it, hide lines)."""
    import subprocess
    import sys

    m = read_manifest(DEMO.read_bytes())
    evil = remanifest(tmp_path / "e.tflite", version=2,
                      source={**m.source, "file": "model\x1b]0;owned\x07.h5", "converted_at": "\x1b[2J\x1b[1A"})
    state = tmp_path / "state"
    ModelStore(state).install(evil, allow_unsigned=True)
    r = subprocess.run([sys.executable, "-m", "ecosorter.edge.cli", "model", "list", "--state-dir", str(state)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "model?]0;owned?.h5" in r.stdout  # shown, with what it cannot print as ?
