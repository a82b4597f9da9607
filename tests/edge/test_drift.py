"""The bin watches its own model: the warning raises on a sequence that leaves the validation band,
clears by itself when the sequence comes back, and never stops sorting."""

from __future__ import annotations

import shutil

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.decide.drift import DriftWatch, expected_from_manifest, wilson_lower
from ecosorter.edge.machine import CONDITIONS
from ecosorter.edge.sorter import build_sorter
from tests.conftest import SAMPLES

WORDS_EN = "The model no longer fits this bin: label items and retrain"


def feed(w: DriftWatch, n: int, uncertain_every: int = 0, confidence: float = 0.95, start: int = 0) -> list[bool]:
    out = []
    for i in range(start, start + n):
        w.item(f"e{i}", "kaca", bool(uncertain_every) and i % uncertain_every == 0, confidence)
        out.append(w.check()[0])
    return out


def test_wilson_lower_bound():
    assert wilson_lower(0, 100) == 0.0
    assert 0.03 < wilson_lower(10, 100) < 0.1 and wilson_lower(50, 100) < 0.5


def test_uncertain_share_raises_and_clears_with_hysteresis():
    w = DriftWatch({"uncertain": 0.10}, window=100, min_items=40)
    assert not any(feed(w, 150, uncertain_every=10))  # 10%: in the band
    states = feed(w, 100, uncertain_every=2, start=150)  # half uncertain: the camera moved, say
    assert states[-1] and "uncertain" in w.check()[1]
    first = states.index(True)
    assert 5 < first < 60  # raised once the window holds enough of the new items, not on one
    states = feed(w, 150, uncertain_every=10, start=250)  # back to 10%
    assert not states[-1]
    cleared = states.index(False)
    assert cleared > 40  # hysteresis: not the moment the bound dips, only when the share is back


def test_too_few_items_say_nothing_and_presses_and_labels_count():
    w = DriftWatch({"routed_right": 0.9, "top1_error": 0.1}, window=100, min_items=40)
    feed(w, 30)
    for i in range(30):
        w.wrong(f"e{i}")
    assert not w.check()[0]  # 30 items: too few to judge
    feed(w, 30, start=30)
    assert w.check()[0] and "wrong" in w.check()[1]
    w2 = DriftWatch({"top1_error": 0.1}, window=100, min_items=40)
    feed(w2, 60)
    for i in range(25):
        w2.label(f"e{i}", "logam")  # the person says metal; the model said glass
    w2.label("e30", "kaca")  # agrees: not a disagreement
    assert w2.check()[0] and w2.figures()["disagree"] == 25


def test_mean_confidence():
    w = DriftWatch({"mean_confidence": 0.9, "confidence_sd": 0.1, "n": 300}, window=100, min_items=40)
    assert not any(feed(w, 100, confidence=0.9))
    assert feed(w, 100, confidence=0.6, start=100)[-1]
    assert not feed(w, 100, confidence=0.9, start=200)[-1]


def test_expected_figures_come_from_the_manifest():
    dec = {"fallback": "khusus", "fallback_share": 0.12, "routed_right": 0.85, "mean_confidence": 0.8,
           "confidence_sd": 0.1, "top1_error": 0.1, "n_certify": 245}
    e = expected_from_manifest(dec, {"tflite_accuracy": 0.5})
    assert e == {"uncertain": 0.12, "routed_right": 0.85, "mean_confidence": 0.8, "confidence_sd": 0.1,
                 "top1_error": 0.1, "n": 245}
    assert expected_from_manifest(None, {"tflite_accuracy": 0.891}) == pytest.approx({"top1_error": 0.109})
    c = CONDITIONS["model_drift"]
    assert c.kind == "warning" and c.scope == "none" and c.reason_en == WORDS_EN
    assert c.reason_id.startswith("Model tidak lagi cocok dengan bin ini")


def test_the_real_sorter_raises_and_clears_the_warning_and_keeps_sorting(tmp_path):
    cam = tmp_path / "camera"
    cam.mkdir()
    for p in sorted(SAMPLES.glob("*.jpg")):
        shutil.copy(p, cam / p.name)
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(cam), "camera.loop": True,
                                 "hardware.pin_factory": "mock", "hardware.settle_s": 0.0, "hardware.drop_s": 0.0,
                                 "hardware.led_on_s": 0.0})
    with build_sorter(cfg, state_dir=tmp_path) as sorter:
        # the demo model's own figures: its thresholds' certify figures on the validation photos
        man = sorter.model.manifest
        assert man.decision is not None  # the demo ships thresholds for a 2.5% budget
        assert sorter.drift.expected == pytest.approx(expected_from_manifest(man.decision, man.verification))
        assert set(sorter.drift.expected) >= {"uncertain", "routed_right", "top1_error"}
        sorter.drift = DriftWatch(sorter.drift.expected, window=40, min_items=20)  # a short window: a fast test
        sorter.run(max_items=30)
        assert not sorter.machine.active("model_drift")
        rows = sorter.events.query("SELECT id, label FROM events ORDER BY rowid")
        for r in rows[-20:]:  # a person labels 20 items as something else than the model said
            assert sorter.label(r["id"], "organik" if r["label"] != "organik" else "kaca", "test")
        sorter.run(max_items=31)
        assert sorter.machine.active("model_drift")
        snap = sorter.machine.snapshot()
        assert snap["state"] == "ready" and sorter.machine.may_move()  # a warning, not a hold
        (warning,) = snap["warnings"]
        assert warning["reason_en"] == WORDS_EN and "disagree" in warning["detail"]
        assert sorter.board.snapshot()["machine"]["warnings"][0]["name"] == "model_drift"
        assert metric_warnings(sorter.board) == {"model_drift": 1.0}
        sorter.run(max_items=75)  # sorting went on; the labelled items roll out of the window
        assert sorter.summary.items == 75 and not sorter.machine.active("model_drift")
        assert not sorter.board.snapshot()["machine"]["warnings"]
        assert metric_warnings(sorter.board) == {"model_drift": 0.0}  # seen since start, not active


def metric_warnings(board) -> dict:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from ecosorter.edge.status.server import metrics_registry

    text = generate_latest(metrics_registry(board)).decode()
    fam = {f.name: f for f in text_string_to_metric_families(text)}["ecosorter_warnings"]
    return {s.labels["name"]: s.value for s in fam.samples}


def test_expected_figures_follow_the_budget_the_bin_runs():
    from ecosorter.edge.decide.drift import expected_for
    from ecosorter.edge.decide.thresholds import decision_rule

    labels = ["kaca", "khusus"]
    block = {"budget": 0.02, "temperature": 2.0, "thresholds": {"kaca": 0.9, "khusus": 0.9}, "fallback_share": 0.4,
             "top1_error": 0.1, "ladder": [{"budget": 0.05, "thresholds": {"kaca": 0.6, "khusus": 0.6},
                                            "fallback_share": 0.15, "top1_error": 0.1}]}
    assert expected_for(decision_rule(load_config().decision, labels, block), {})["uncertain"] == 0.4
    cfg = load_config(overrides={"decision.contamination_budget": 0.05})
    assert expected_for(decision_rule(cfg.decision, labels, block), {})["uncertain"] == 0.15
    cfg = load_config(overrides={"decision.class_thresholds": {"kaca": 0.3}})
    assert expected_for(decision_rule(cfg.decision, labels, block), {}) == {"top1_error": 0.1}
