"""Audit of issue 17 in the real Sorter: a model carrying a `decision` block (written by
`ecosorter-convert thresholds` on the committed photos), the config's budget picking from its
ladder, and the drift watch on the figures that block states."""

from __future__ import annotations

import shutil

import pytest

from ecosorter.convert.cli import main as convert_main
from ecosorter.edge.config import load_config
from ecosorter.edge.decide.drift import DriftWatch
from ecosorter.edge.errors import ConfigError
from ecosorter.edge.sorter import build_sorter
from tests.conftest import LABELS7, SAMPLES
from tests.convert.test_thresholds import DEMO, _photos


@pytest.fixture(scope="module")
def thresholded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decide")
    model = tmp / "t.tflite"
    assert convert_main(["thresholds", str(DEMO), "--validation", str(_photos(tmp)), "--contamination", "0.05",
                         "-o", str(model), "--quiet"]) == 0
    cam = tmp / "camera"
    shutil.copytree(SAMPLES, cam)
    return model, cam


def _cfg(model, cam, **over):
    return load_config(overrides={"model.path": str(model), "camera.source": "folder", "camera.device": str(cam),
                                  "camera.loop": True, "hardware.pin_factory": "mock", "hardware.settle_s": 0.0,
                                  "hardware.drop_s": 0.0, "hardware.led_on_s": 0.0, "record.capture": "none",
                                  **over})


def test_one_wrong_press_is_not_drift_when_validation_saw_no_mistake(thresholded, tmp_path):
    """The model routed all 36 certify photos right: expected "wrong" share 0 from 36 photos, whose
    own 99% upper bound is ~15%. One "wrong" press in 55 items (1.8%) fits that; the bin must not
    say "the model no longer fits this bin". Fifteen presses do not fit: raised, sorting goes on,
    and it clears once those items have rolled out of the window."""
    model, cam = thresholded
    with build_sorter(_cfg(model, cam), state_dir=tmp_path) as sorter:
        assert sorter.voter.rule.source == "model" and sorter.drift.expected["routed_right"] == 1.0
        sorter.drift = DriftWatch(sorter.drift.expected, window=60, min_items=50)
        sorter.run(max_items=55)
        ids = [r["id"] for r in sorter.events.query("SELECT id FROM events ORDER BY rowid")]
        assert sorter.flag(ids[-3])
        sorter.run(max_items=56)
        assert not sorter.machine.active("model_drift"), sorter.drift.check()[1]
        for i in ids[-20:-5]:
            sorter.flag(i)
        sorter.run(max_items=57)
        assert sorter.machine.active("model_drift") and "wrong" in sorter.drift.check()[1]
        assert sorter.machine.may_move()  # a warning, never a hold
        sorter.run(max_items=120)
        assert sorter.summary.items == 120 and not sorter.machine.active("model_drift")


def test_the_config_budget_picks_from_the_ladder_and_routes_by_it(thresholded, tmp_path):
    model, cam = thresholded
    budgets = {}
    # 49 photos cannot certify 2% (crc needs 70): that rung routes nothing, so it is no option
    with pytest.raises(ConfigError, match=r"0.02 is below every budget the model has certified thresholds for "
                                          r"\(0.03, 0.05, 0.1\)"):
        build_sorter(_cfg(model, cam, **{"decision.contamination_budget": 0.02}), state_dir=tmp_path / "b")
    for budget in (0.0, 0.03, 0.5):
        with build_sorter(_cfg(model, cam, **{"decision.contamination_budget": budget}),
                          state_dir=tmp_path / f"b{budget}") as sorter:
            rule = sorter.voter.rule
            budgets[budget] = rule.budget
            sorter.run(max_items=13)
            t = dict(zip(LABELS7, rule.thresholds, strict=True))
            rows = sorter.events.query("SELECT label, confidence, uncertain, compartment, routed_to FROM events")
            for r in rows:
                # a threshold of 1 is never reached, even by a top probability of exactly 1.0
                assert bool(r["uncertain"]) == (r["confidence"] < t[r["label"]] or t[r["label"]] >= 1.0), dict(r)
                assert r["routed_to"] == r["compartment"]
            assert rule.chosen["feasible"]
    # 0 = the model's own 5%; otherwise the loosest of its budgets at or below the config's
    assert budgets == {0.0: 0.05, 0.03: 0.03, 0.5: 0.1}


@pytest.mark.parametrize("roi, budget", [([0.0, 0.0, 1.0, 1.0], 0.0), ([0.2, 0.1, 0.5, 0.6], 0.05)])
def test_classify_json_decides_as_run_routes_under_the_same_config(thresholded, tmp_path, capsys, roi, budget):
    """`classify --json --config C` says what the bin would do with a photo: the same decision,
    compartment and confidence as `run` under C routes that photo, camera.roi crop included."""
    import json

    from ecosorter.edge.cli import main as edge_main

    model, cam = thresholded
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\npath = "{model}"\n[camera]\nsource = "folder"\ndevice = "{cam}"\nroi = {roi}\n'
                   f'[decision]\ncontamination_budget = {budget}\n[hardware]\nprofile = "none"\npin_factory = "mock"\n'
                   'settle_s = 0.0\n[record]\ncapture = "none"\n')
    photos = sorted(cam.glob("*.jpg"))
    capsys.readouterr()
    assert edge_main(["classify", "--json", "--config", str(cfg), *map(str, photos)]) == 0
    said = {json.loads(line)["image"].rsplit("/", 1)[1]: json.loads(line)["decision"]
            for line in capsys.readouterr().out.splitlines() if line.startswith("{")}
    with build_sorter(load_config(cfg), state_dir=tmp_path / "state") as sorter:
        sorter.run(max_items=len(photos))
        done = {r["source_name"]: r for r in sorter.events.query("SELECT * FROM events")}
    assert len(said) == len(done) == 13
    for name, d in said.items():
        r = done[name]
        assert (d["uncertain"], d["compartment"]) == (bool(r["uncertain"]), r["routed_to"]), (name, d, dict(r))
        assert d["compartment_name"] == str(r["routed_to"] + 1)  # as `run` prints it: numbered from 1
        assert d["confidence"] == pytest.approx(r["confidence"], abs=1e-6), name


def test_the_rule_in_words_names_its_thresholds_and_source():
    from ecosorter.edge.decide.thresholds import DecisionRule

    rule = DecisionRule(("a", "b", "c"), (0.9, 0.95, 1.0), 0.7, 0.02, "model")
    assert rule.needs("a") == "needs 90.00%" and rule.needs("c") == "never confident"
    assert rule.words() == ("90.00-100.00% by class (the model's calibrated thresholds for a 2% contamination "
                            "budget)")
    assert DecisionRule(("a", "b"), (0.55, 0.55)).words() == \
        "55.00% for every class (decision.threshold / decision.class_thresholds)"
