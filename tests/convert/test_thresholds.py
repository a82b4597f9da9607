"""Calibrated thresholds for a contamination budget: the guarantee holds, the bin uses them."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ecosorter.convert import thresholds as th
from ecosorter.convert.cli import main as convert_main
from ecosorter.convert.embed import embed_metadata
from ecosorter.edge.cli import main as edge_main
from ecosorter.edge.config import load_config
from ecosorter.edge.decide import CompartmentMap, Voter
from ecosorter.edge.decide.thresholds import calibrate
from ecosorter.edge.errors import ConfigError
from ecosorter.edge.model import load_model
from tests.conftest import DATA, LABELS7, SAMPLES, SHARED

DEMO = SAMPLES.parent / "demo_int8.tflite"
COMP = th.compartment_index(LABELS7, None)
KHUSUS = LABELS7.index("khusus")


def synth(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An overconfident 7-class model: classes of unequal difficulty, logits scaled up 2.5x."""
    y = rng.integers(0, 7, n)
    z = rng.normal(0, 1, (n, 7))
    z[np.arange(n), y] += np.array([3.0, 2.5, 1.2, 1.5, 2.8, 3.5, 1.8])[y]
    z *= 2.5
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def synth_one_class_overconfident(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """synth(), plus 6% of items confidently called metal although they are not: one class whose
    probabilities mean less than the others' (what one temperature cannot fix)."""
    p, y = synth(n, rng)
    lie = (rng.random(n) < 0.06) & (y != LABELS7.index("logam"))
    z = np.log(p[lie])
    z[:, LABELS7.index("logam")] = z.max(1) + rng.uniform(1, 6, lie.sum())
    q = np.exp(z - z.max(1, keepdims=True))
    p[lie] = q / q.sum(1, keepdims=True)
    return p, y


def test_outcome_definitions():
    p = np.full((4, 7), 0.01)
    p[0, 0] = p[1, 4] = p[2, 4] = p[3, 1] = 0.94
    p[2, 4], p[3, 1] = 0.5, 0.5
    truth = np.array([0, 0, 0, KHUSUS])
    o = th.outcome(p, truth, np.full(7, 0.6), COMP, KHUSUS)
    # right; confident metal for glass (contamination); uncertain glass (fallback, not its own); uncertain khusus (right)
    assert o["routed_right"] == 0.5 and o["contamination"] == 0.25
    assert o["fallback"] == 0.5 and o["fallback_wrong"] == 0.25


def test_temperature_fixes_overconfidence():
    p, y = synth(3000, np.random.default_rng(0))
    t = th.fit_temperature(p, y)
    assert t > 1.2  # the logits were scaled up
    assert th.nll(p, y, t) < th.nll(p, y, 1.0) and th.ece(calibrate(p, t), y) < th.ece(p, y) / 2


def test_crc_keeps_the_expected_contamination_within_the_budget():
    test_p, test_y = synth(20000, np.random.default_rng(1))
    seen, right = [], []
    for seed in range(60):
        p, y = synth(300, np.random.default_rng(100 + seed))
        c = th.choose(p, y, LABELS7, 0.05)
        assert c.feasible and c.n_certify == 300 - c.n_fit
        o = th.outcome(calibrate(test_p, c.temperature), test_y, np.array(list(c.thresholds.values())), COMP, KHUSUS)
        seen.append(o["contamination"])
        right.append(o["routed_right"])
    # E[contamination] <= 0.05; the mean of 60 draws has a standard error of about 0.003
    assert np.mean(seen) <= 0.05 + 0.006, np.mean(seen)
    assert np.mean(right) > 0.55  # and it is not bought by sending everything to the fallback


def test_ltt_keeps_the_budget_with_high_probability():
    test_p, test_y = synth(20000, np.random.default_rng(2))
    over = 0
    for seed in range(40):
        p, y = synth(400, np.random.default_rng(200 + seed))
        c = th.choose(p, y, LABELS7, 0.05, method="ltt", delta=0.05)
        o = th.outcome(calibrate(test_p, c.temperature), test_y, np.array(list(c.thresholds.values())), COMP, KHUSUS)
        over += o["contamination"] > 0.05
    assert over <= 5  # P(contamination > budget) <= 5%: expect about 2 of 40 at most


def test_too_few_photos_say_how_many_are_needed():
    p, y = synth(60, np.random.default_rng(3))
    c = th.choose(p, y, LABELS7, 0.01)
    assert not c.feasible and c.photos_needed == 142  # 1/(n+1) <= 0.01 needs 99 certify photos, 70% of all
    assert set(c.thresholds.values()) == {th.NEVER}  # everything uncertain: nothing certified
    assert "NOT CERTIFIABLE" in th.format_choice(c) and "142" in th.format_choice(c)
    assert th.photos_needed(0.02, "ltt", 0.05, 0.3) == 213  # (0.98)^m <= 0.05: m = 149
    # photos apart shape the rule (--fit-on): every given photo certifies, so 99 of them would do, not 142
    fp, fy = synth(60, np.random.default_rng(4))
    apart = th.choose(p, y, LABELS7, 0.01, fit=(fp, fy))
    assert not apart.feasible and apart.fit_apart and apart.n_certify == 60 and apart.photos_needed == 99
    assert ("NOT CERTIFIABLE: 60 certify photos (--validation) are too few for a 1% budget (crc); every item "
            "would be uncertain. Give at least 99 labelled photos in --validation") in th.format_choice(apart)
    with pytest.raises(th.ThresholdError, match="between 0 and 1"):
        th.choose(p, y, LABELS7, 2.0)
    with pytest.raises(th.ThresholdError, match="fit photos .--fit-on. are 3, fewer than the 7 labels"):
        th.choose(p, y, LABELS7, 0.05, fit=(p[:3], y[:3]))  # 63 photos in all: the total is not at fault


def test_auto_family_is_one_global_threshold_until_a_class_has_the_photos_for_its_own():
    # 300 photos (90 fit) at a 5% budget: no class has 5 / 0.05 = 100 fit items -> one threshold
    p, y = synth(300, np.random.default_rng(5))
    c = th.choose(p, y, LABELS7, 0.05)
    assert c.family == "global" and len(set(c.thresholds.values())) == 1
    assert c.block()["family"] == "global" and "thresholds: global" in th.format_choice(c)
    assert c.thresholds == th.choose(p, y, LABELS7, 0.05, family="global").thresholds
    # 6000 photos (1800 fit, ~250 per class): every class shapes its own
    p, y = synth(6000, np.random.default_rng(6))
    assert th.choose(p, y, LABELS7, 0.05).family == "per-class"
    # one large class among small ones: only it gets its own threshold, the rest share the pooled one
    keep = (y == 0) | (np.random.default_rng(7).random(len(y)) < 0.15)
    c = th.choose(p[keep], y[keep], LABELS7, 0.05)
    assert c.family == "per-class for kaca; global for the rest", c.family
    rest = {v for k, v in c.thresholds.items() if k != "kaca"}
    assert len(rest) == 1 and c.thresholds["kaca"] not in rest
    with pytest.raises(th.ThresholdError, match="family 'perclass'; allowed: auto, per-class, global"):
        th.choose(p, y, LABELS7, 0.05, family="perclass")


def test_auto_family_routes_at_least_as_many_right_as_one_global_threshold():
    """The default never does worse than one global threshold at the same budget: with few photos it
    is that threshold; with many, per-class thresholds route more right where one class's
    probabilities mean less than the others'. (Where a temperature calibrates every class alike, one
    threshold on the calibrated probability is already the best rule, and per-class gains nothing.)"""
    test_p, test_y = synth_one_class_overconfident(20000, np.random.default_rng(8))
    for n, seeds in ((300, 20), (8000, 4)):
        gain, contam = [], []
        for seed in range(seeds):
            p, y = synth_one_class_overconfident(n, np.random.default_rng(300 + 10 * n + seed))
            got = {}
            for fam in ("auto", "global"):
                c = th.choose(p, y, LABELS7, 0.05, family=fam)
                got[fam] = th.outcome(calibrate(test_p, c.temperature), test_y,
                                      np.array(list(c.thresholds.values())), COMP, KHUSUS)
            gain.append(got["auto"]["routed_right"] - got["global"]["routed_right"])
            contam.append(got["auto"]["contamination"])
        assert np.mean(contam) <= 0.05 + 0.006, (n, np.mean(contam))
        if n == 300:
            assert np.allclose(gain, 0)  # the same rule
        else:
            assert np.mean(gain) > 0.005, (n, np.mean(gain))  # per-class pays once there are photos for it


def test_photos_that_chose_the_model_shape_but_never_certify():
    """`fit`: the photos a model was picked on are optimistic about it (the winner's curse); they may
    shape the temperature and family, and every other photo certifies."""
    fp, fy = synth(200, np.random.default_rng(9))
    p, y = synth(300, np.random.default_rng(10))
    c = th.choose(p, y, LABELS7, 0.05, fit=(fp, fy))
    assert (c.n_fit, c.n_certify, c.n) == (200, 300, 500)
    assert c.temperature == th.fit_temperature(fp, fy)
    # the certify figures are those of the 300 photos exactly, under the chosen thresholds
    o = th.outcome(calibrate(p, c.temperature), y, np.array(list(c.thresholds.values())), COMP, KHUSUS)
    assert c.certify["contamination"] == o["contamination"] and c.certify["routed_right"] == o["routed_right"]
    k = o["contaminating"]
    assert c.bound == pytest.approx((k + 1) / 301) and c.bound <= 0.05
    # the guarantee still holds on photos like the certify ones, whatever the fit photos were
    test_p, test_y = synth(20000, np.random.default_rng(11))
    seen = []
    for seed in range(30):
        p, y = synth(300, np.random.default_rng(400 + seed))
        sharp = calibrate(fp, 0.4)  # fit photos that say the model is much more confident than it is
        c = th.choose(p, y, LABELS7, 0.05, fit=(sharp, fy))
        seen.append(th.outcome(calibrate(test_p, c.temperature), test_y, np.array(list(c.thresholds.values())),
                               COMP, KHUSUS)["contamination"])
    assert np.mean(seen) <= 0.05 + 0.006, np.mean(seen)
    with pytest.raises(th.ThresholdError, match="fit probabilities"):
        th.choose(p, y, LABELS7, 0.05, fit=(fp[:, :6], fy))


def test_tied_saturated_scores_pass_or_fail_together():
    # int8 softmax outputs saturate at 255/256: a threshold cannot split a tie
    p = np.zeros((40, 7))
    y = np.array([0] * 40)
    p[:, 0] = 255 / 256
    p[:, 1] = 1 / 256
    p[:4, 0], p[:4, 4] = 1 / 256, 255 / 256  # four tied, confident metal answers for glass
    fam = th.threshold_family(p, y, COMP)
    for row in fam:
        confident = p.max(1) >= row[p.argmax(1)]
        assert confident[:4].all() or not confident[:4].any()
        assert confident[4:].all() or not confident[4:].any()
    assert (np.diff(fam, axis=0) <= 1e-12).all()  # thresholds only fall along the family


def test_plot_and_report(tmp_path):
    p, y = synth(500, np.random.default_rng(4))
    block, c = th.decision_block(p, y, LABELS7, 0.05)
    assert [e["budget"] for e in block["ladder"]] == [b for b in th.LADDER if b != 0.05]
    png = th.plot_curve(c, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    r = th.report(c)
    assert r["curve"][r["chosen_index"]]["contamination"] == c.certify["contamination"]
    assert set(r["per_class"]) == set(LABELS7)


class _OneFrame(Voter):
    def add(self, probs):  # one photo: decide on it alone, as classify does
        return super().add(probs) or self.flush()


def _voter(cfg_over: dict, decision: dict | None) -> Voter:
    cfg = load_config(overrides=cfg_over)
    return _OneFrame(cfg.decision, LABELS7, CompartmentMap(cfg.hardware.compartments, LABELS7, "khusus"), decision)


def test_an_early_frame_decides_only_when_its_class_threshold_is_met_too():
    """early_confidence 0.9 against a 0.963 threshold: a first frame at 0.93 waits for more frames
    (their mean may clear it) instead of sending the item to the fallback on one look."""
    block = {"budget": 0.025, "temperature": 1.0, "thresholds": dict.fromkeys(LABELS7, 0.963)}
    cfg = load_config(overrides={"decision.frames": 3, "decision.early_confidence": 0.9})
    voter = Voter(cfg.decision, LABELS7, CompartmentMap(cfg.hardware.compartments, LABELS7, "khusus"), block)

    def frame(top: float) -> np.ndarray:
        p = np.full(7, (1 - top) / 6, np.float32)
        p[0] = top
        return p
    assert voter.add(frame(0.93)) is None  # not decided on one frame
    assert voter.add(frame(0.99)) is None
    d = voter.add(frame(0.99))
    assert d.frames == 3 and not d.uncertain and d.label == "kaca"  # the mean 0.97 clears 0.963
    d = voter.add(frame(0.98))
    assert d.frames == 1 and not d.uncertain  # confident under both: at once


def test_voter_uses_the_model_thresholds_and_the_config_overrides():
    block = {"budget": 0.02, "temperature": 2.0, "thresholds": dict.fromkeys(LABELS7, 0.5) | {"kaca": 0.9},
             "ladder": [{"budget": 0.05, "thresholds": dict.fromkeys(LABELS7, 0.3)}]}
    p = np.full(7, 0.02, np.float32)
    p[0] = 0.88  # glass at 0.88 raw, 0.55 calibrated at T = 2
    d = _voter({}, block).add(p.copy())
    assert d.uncertain and d.compartment == KHUSUS and 0.5 < d.confidence < 0.6
    assert not _voter({"decision.contamination_budget": 0.05}, block).add(p.copy()).uncertain  # the ladder's 0.3
    assert not _voter({"decision.class_thresholds": {"kaca": 0.5}}, block).add(p.copy()).uncertain
    assert not _voter({"decision.model_thresholds": False}, block).add(p.copy()).uncertain  # 0.88 >= 0.55
    with pytest.raises(ConfigError, match=r"decision.contamination_budget.*0.02, 0.05"):
        _voter({"decision.contamination_budget": 0.01}, block)
    with pytest.raises(ConfigError, match="carries no thresholds"):
        _voter({"decision.contamination_budget": 0.01}, None)
    # a rung its photos could not certify (thresholds of 1: every item to the fallback) is no option
    uncertified = {"budget": 0.01, "thresholds": dict.fromkeys(LABELS7, 1.0), "feasible": False}
    ladder = block | {"ladder": [*block["ladder"], uncertified]}
    assert _voter({"decision.contamination_budget": 0.01}, ladder | {"budget": 0.005}).rule.budget == 0.005
    with pytest.raises(ConfigError, match=r"0.01 is below every budget the model has certified thresholds for "
                                          r"\(0.02, 0.05\)"):
        _voter({"decision.contamination_budget": 0.01}, ladder)


def test_a_threshold_of_one_is_never_reached_even_by_a_saturated_softmax():
    """A float model's softmax (or a temperature below ~0.4) gives a top probability of exactly 1.0;
    a rule whose thresholds are 1 (a budget too small to certify) must still route nothing confidently:
    in the bin's Voter, in the chooser's outcome and in the conversion gate's routing."""
    from ecosorter.convert.verify import BinRules

    p = np.zeros(7, np.float32)
    p[LABELS7.index("kaca")] = 1.0
    assert calibrate(p, 0.3).max() == 1.0 and calibrate(p, 1.0).max() == 1.0
    never = {"budget": 0.005, "temperature": 0.3, "thresholds": dict.fromkeys(LABELS7, 1.0), "feasible": False}
    d = _voter({}, never).add(p.copy())
    assert d.uncertain and d.compartment == KHUSUS and d.confidence == 1.0
    assert _voter({"decision.model_thresholds": False, "decision.class_thresholds": {"kaca": 1.0}},
                  None).add(p.copy()).uncertain
    assert not _voter({}, never | {"thresholds": dict.fromkeys(LABELS7, 0.9999)}).add(p.copy()).uncertain
    probs, truth = np.tile(p, (3, 1)).astype(np.float64), np.array([0, 1, 2])  # two of three are not glass
    o = th.outcome(probs, truth, np.full(7, th.NEVER), COMP, KHUSUS)
    assert o["contamination"] == 0.0 and o["fallback"] == 1.0
    routed, sure = BinRules(threshold=1.0).route(probs, LABELS7)
    assert not sure.any() and set(routed) == {KHUSUS}


def test_the_thresholds_written_are_the_ones_certified():
    """The manifest stores thresholds to 4 places: rounded up, and the certify figures and bound are
    those of the rule as written. Rounded to the nearest, seeds 26 and 139 of these draws certified
    2% and then contaminated 7 of their own certify photos, not the 6 certified, under the stored thresholds."""
    for seed in (26, 139, 0):
        p, y = synth(500, np.random.default_rng(seed))
        c = th.choose(p, y, LABELS7, 0.02)
        written = np.array(list(c.block()["thresholds"].values()))
        assert np.all(written >= np.array(list(c.thresholds.values())) - 1e-12)
        assert np.all(np.round(written, 4) == written)
        _, cert = th.split(y, th.FIT_FRACTION, 0)
        o = th.outcome(calibrate(p[cert], c.temperature), y[cert], written, COMP, KHUSUS)
        assert o["contamination"] == c.certify["contamination"] and o["routed_right"] == c.certify["routed_right"]
        assert c.feasible and (o["contaminating"] + 1) / (c.n_certify + 1) <= 0.02


def _photos(tmp_path):
    """All committed photos in class folders: tests/data (36) and the demo samples (13)."""
    d = tmp_path / "val"
    shutil.copytree(DATA, d)
    for p in SAMPLES.glob("*.jpg"):
        (d / p.name.split("-")[1]).mkdir(exist_ok=True)
        shutil.copy(p, d / p.name.split("-")[1] / p.name)
    return d


def test_thresholds_into_a_converted_model_and_classify_uses_them(tmp_path, capsys):
    val, out, report = _photos(tmp_path), tmp_path / "t.tflite", tmp_path / "t.json"
    rc = convert_main(["thresholds", str(DEMO), "--validation", str(val), "--contamination", "0.05",
                       "-o", str(out), "--report", str(report), "--quiet"])
    assert rc == 0, capsys.readouterr().out
    r = json.loads(report.read_text())["decision"]
    assert r["n"] == 49 and r["feasible"] and (tmp_path / "t.png").exists()
    with load_model(out) as m:
        dec = m.manifest.decision
        assert dec["budget"] == 0.05 and dec["method"] == "crc" and set(dec["thresholds"]) == set(LABELS7)
        assert dec["n"] == 49 and dec["bound"] <= 0.05 and dec["temperature"] == r["calibration"]["temperature"]
    capsys.readouterr()
    assert edge_main(["classify", "--json", "--model", str(out), *map(str, sorted(SAMPLES.glob("*.jpg")))]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 13
    for row in rows:
        d = row["decision"]
        top = row["label"]
        if abs(d["confidence"] - dec["thresholds"][top]) > 1e-5:  # confidence is printed to 6 places
            assert d["uncertain"] == (d["confidence"] < dec["thresholds"][top])
        assert d["label"] == ("khusus" if d["uncertain"] else top) and d["compartment"] == LABELS7.index(d["label"])
    # a config routing glass and metal together, with the model's thresholds overridden for glass
    cfg = tmp_path / "c.toml"
    cfg.write_text('[decision]\nclass_thresholds = { kaca = 0.0 }\n[hardware]\nprofile = "none"\n'
                   'compartments = { kaca = 0, kardus = 1, kertas = 2, khusus = 3, logam = 0, organik = 4, plastik = 5 }\n')
    assert edge_main(["classify", "--json", "--model", str(out), "--config", str(cfg),
                      str(SAMPLES / "01-kaca-trashnet-glass1.jpg"), str(SAMPLES / "05-logam-trashnet-metal120.jpg")]) == 0
    a, b = (json.loads(line)["decision"] for line in capsys.readouterr().out.splitlines() if line.startswith("{"))
    assert a == {**a, "label": "kaca", "compartment": 0, "uncertain": False}
    assert b["compartment"] == (3 if b["uncertain"] else 0)


def test_thresholds_fit_on_other_photos_certify_on_all_of_validation(tmp_path, capsys):
    val, out, report = _photos(tmp_path), tmp_path / "t.tflite", tmp_path / "t.json"
    fit = tmp_path / "fit"
    for d in sorted(val.iterdir()):  # the tests/data photos shape; the demo samples all certify
        for f in sorted(d.glob("*.jpg")):
            if not f.name[:2].isdigit():
                (fit / d.name).mkdir(parents=True, exist_ok=True)
                f.rename(fit / d.name / f.name)
    rc = convert_main(["thresholds", str(DEMO), "--validation", str(val), "--fit-on", str(fit),
                       "--contamination", "0.1", "-o", str(out), "--report", str(report), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    r = json.loads(report.read_text())
    assert r["fit_on"] == str(fit) and r["decision"]["n_fit"] == 36 and r["decision"]["n_certify"] == 13
    assert "fit on 36 photos" in printed and "13 certify photos" in printed
    with load_model(out) as m:
        assert (m.manifest.decision["n_fit"], m.manifest.decision["n_certify"]) == (36, 13)


def test_fit_on_photos_that_are_also_validation_photos_are_refused(tmp_path, capsys):
    """--fit-on equal to --validation, or one photo copied into both under another name: the photo
    would shape the family and certify it, and the guarantee would be void without a word."""
    val, out = _photos(tmp_path), tmp_path / "t.tflite"
    args = ["--contamination", "0.1", "-o", str(out), "--quiet"]
    assert convert_main(["thresholds", str(DEMO), "--validation", str(val), "--fit-on", str(val), *args]) != 0
    err = capsys.readouterr().err
    assert f"--fit-on {val} and --validation {val} share 49 photo(s)" in err and not out.exists()
    fit = tmp_path / "fit"
    shutil.copytree(DATA, fit)  # tests/data only: the demo samples certify...
    shutil.copy(val / "kaca" / "01-kaca-trashnet-glass1.jpg", fit / "kaca" / "copy.jpg")  # ...but one is in both
    for f in fit.rglob("*.jpg"):
        if f.name != "copy.jpg":
            for dup in val.rglob(f.name):
                dup.unlink()
    assert convert_main(["thresholds", str(DEMO), "--validation", str(val), "--fit-on", str(fit), *args]) != 0
    err = capsys.readouterr().err
    assert "share 1 photo(s)" in err and "copy.jpg" in err and "01-kaca-trashnet-glass1.jpg" in err
    (fit / "kaca" / "copy.jpg").unlink()
    assert convert_main(["thresholds", str(DEMO), "--validation", str(val), "--fit-on", str(fit), *args]) == 0


def test_a_budget_too_small_for_the_photos_writes_nothing(tmp_path, capsys):
    val, out = _photos(tmp_path), tmp_path / "t.tflite"
    rc = convert_main(["thresholds", str(DEMO), "--validation", str(val), "--contamination", "0.01",
                       "-o", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 1 and not out.exists()
    assert "cannot be certified with 49 photos" in text and "at least 142" in text
    assert "(or 99 in --validation with other labelled photos to shape the rule: --fit-on DIR)" in text
    fit = tmp_path / "fit"  # the alternative, taken: with too few of them it says how many
    for d in sorted(val.iterdir()):
        for f in sorted(d.glob("*.jpg"))[1:]:
            (fit / d.name).mkdir(parents=True, exist_ok=True)
            f.rename(fit / d.name / f.name)
    rc = convert_main(["thresholds", str(DEMO), "--validation", str(val), "--fit-on", str(fit),
                       "--contamination", "0.01", "-o", str(out), "--quiet"])
    text = capsys.readouterr().out
    n = sum(1 for _ in val.rglob("*.jpg"))
    assert rc == 1 and not out.exists()
    assert (f"cannot be certified with {n} certify photos (--validation); nothing written. Next: give at least 99 "
            "labelled photos in --validation") in text


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/waste7 (not in a fresh clone)")
def test_demo_thresholds_meet_the_budget_on_photos_they_never_saw(tmp_path):
    """Choose on half of the demo's held-out photos, check on the other half."""
    from ecosorter.convert.decision import edge_probs
    from ecosorter.convert.images import LabelledImage

    files = json.loads((SAMPLES.parent / "demo_training.json").read_text())["held_out"]["files"]
    images = [LabelledImage(SHARED / f, LABELS7.index(f.split("/")[0])) for f in files]
    with load_model(DEMO) as m:
        probs, truth, _ = edge_probs(m.classifier, m.manifest, images)
    a, b = th.split(truth, 0.5, seed=11)
    for budget in (0.05, 0.1):
        c = th.choose(probs[a], truth[a], LABELS7, budget)
        o = th.outcome(calibrate(probs[b], c.temperature), truth[b], np.array(list(c.thresholds.values())),
                       COMP, KHUSUS)
        # no evidence on the unseen half that contamination exceeds the budget (95% lower bound)
        assert th.lower_binomial(int(o["bad"].sum()), len(b)) <= budget, (budget, o["contamination"])
        assert c.feasible and o["routed_right"] > 0.5


def _convert_int8(tiny_h5, photo_dir, tmp_path, budget: str) -> tuple[int, Path, Path]:
    """int8 with the rule for `budget` chosen on the 36 committed photos; the int8 gates wide open."""
    out, report = tmp_path / "m8.tflite", tmp_path / "r.json"
    rc = convert_main([str(tiny_h5), "-o", str(out), "--quantize", "int8", "--calibration", str(photo_dir),
                       "--calibration-size", "100", "--validation", str(DATA), "--report", str(report),
                       "--contamination", budget, "--quiet", "--max-routing-loss", "100",
                       "--max-contamination-gain", "100"])
    return rc, out, report


def test_convert_writes_the_rule_and_judges_int8_under_it(tiny_h5, photo_dir, tmp_path, capsys):
    rc, out, report = _convert_int8(tiny_h5, photo_dir, tmp_path, "0.3")
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "decision rule: budget 30% contamination" in text
    r = json.loads(report.read_text())
    assert r["decision"]["n"] == 36 and (tmp_path / r["decision"]["curve_png"]).is_file()
    rules = r["bin_outcome"]["rules"]
    with load_model(out) as m:
        dec = m.manifest.decision
        assert dec["budget"] == 0.3 and rules["class_thresholds"] == dec["thresholds"]
        assert rules["temperature"] == dec["temperature"] and dec["n_certify"] == r["decision"]["n_certify"]


def test_a_budget_too_small_for_the_photos_blames_the_photos_not_int8(tiny_h5, photo_dir, tmp_path, capsys):
    """int8 passes its gate here; only the 1% budget cannot be certified with 36 photos. The failure
    names the photos needed and gives no int8 drift listing or --keep-float advice."""
    rc, out, report = _convert_int8(tiny_h5, photo_dir, tmp_path, "0.01")
    text = capsys.readouterr().out
    assert rc == 1 and not out.exists(), text
    r = json.loads(report.read_text())
    assert r["bin_outcome"]["passed"] and not r["passed"]  # int8's gate passed; the rule did not
    rules = r["bin_outcome"]["rules"]  # judged under the bin's default rule, not "everything uncertain"
    assert rules["threshold"] == 0.55 and all(t < 1 for t in rules["class_thresholds"].values()), rules
    assert "judged under the bin's own rule: the budget's thresholds could not be certified" in text
    assert ("FAILED: decision rule: a 1% contamination budget cannot be certified with 36 labelled photos. "
            "Next: 1) give at least 142 labelled photos") in text
    assert "int8 error through the depth" not in text and "--keep-float" not in text and "int8_drift" not in r


def test_a_budget_from_ecosorter_train_is_chosen_again_by_convert(tiny_h5, tmp_path, capsys):
    model = tmp_path / "m.h5"
    shutil.copy(tiny_h5, model)
    side = {"labels": LABELS7, "preprocess": "caffe", "decision": {"budget": 0.3}}
    (tmp_path / "m.train.json").write_text(json.dumps(side))
    out = tmp_path / "m.tflite"
    args = [str(model), "-o", str(out), "--quantize", "float16", "--validation", str(DATA), "--quiet",
            "--max-routing-loss", "100"]  # the budget's path is tested here, not the gate
    assert convert_main(args) == 0
    assert "contamination budget 30% from m.train.json" in capsys.readouterr().out
    with load_model(out) as m:
        assert m.manifest.decision["budget"] == 0.3
    # the gate judges under the bin's rule: its config's overrides on top of the model's thresholds
    cfg, report = tmp_path / "bin.toml", tmp_path / "r.json"
    cfg.write_text("[decision]\nclass_thresholds = { kaca = 0.123 }\n")
    assert convert_main([*args, "--bin-config", str(cfg), "--report", str(report)]) == 0
    rules = json.loads(report.read_text())["bin_outcome"]["rules"]
    with load_model(out) as m:
        assert rules["class_thresholds"] == {**m.manifest.decision["thresholds"], "kaca": 0.123}
        assert rules["temperature"] == m.manifest.decision["temperature"]
    capsys.readouterr()
    side["decision"]["budget"] = "lots"
    (tmp_path / "m.train.json").write_text(json.dumps(side))
    assert convert_main(args) == 2
    assert "decision.budget 'lots'" in capsys.readouterr().err


def test_the_sorter_routes_with_the_model_thresholds(tmp_path, capsys):
    from ecosorter.edge.sorter import build_sorter

    val, model = _photos(tmp_path), tmp_path / "t.tflite"
    assert convert_main(["thresholds", str(DEMO), "--validation", str(val), "--contamination", "0.05",
                         "-o", str(model), "--quiet"]) == 0
    cam = tmp_path / "camera"
    shutil.copytree(SAMPLES, cam)
    for budget, want in ((0.0, 0.05), (0.1, 0.1)):
        cfg = load_config(overrides={"model.path": str(model), "camera.source": "folder", "camera.device": str(cam),
                                     "hardware.pin_factory": "mock", "hardware.settle_s": 0.0,
                                     "hardware.drop_s": 0.0, "decision.contamination_budget": budget})
        with build_sorter(cfg, state_dir=tmp_path / f"s{budget}") as sorter:
            rule = sorter.voter.rule
            assert rule.budget == want and rule.source == "model" and rule.temperature != 1.0
            sorter.run()
            assert f"thresholds for {100 * want:g}% contamination" in sorter.board.snapshot()["health"]["model"]["detail"]
            rows = sorter.events.query("SELECT label, confidence, uncertain, compartment FROM events")
        assert len(rows) == 13
        t = dict(zip(LABELS7, rule.thresholds, strict=True))
        for r in rows:  # calibrated confidence against the class's threshold; uncertain to khusus
            assert bool(r["uncertain"]) == (r["confidence"] < t[r["label"]] - 1e-9) or abs(r["confidence"] - t[r["label"]]) < 1e-6
            assert r["compartment"] == (KHUSUS if r["uncertain"] else LABELS7.index(r["label"]))

    # a swap to a model that cannot keep the config's budget (no thresholds) is refused; sorting goes on
    bare = tmp_path / "bare.tflite"  # the demo without its decision block (the demo now ships one)
    with load_model(DEMO) as m:
        manifest = dataclasses.replace(m.manifest, decision=None)
    bare.write_bytes(embed_metadata(DEMO.read_bytes(), manifest.to_json()))
    with build_sorter(cfg, state_dir=tmp_path / "swap") as sorter:
        before = sorter.voter
        sorter._swap_model(bare)
        assert sorter.voter is before and sorter.model.path == model
        assert "update refused" in sorter.board.snapshot()["health"]["model"]["detail"]
        assert "contamination_budget" in sorter.board.snapshot()["health"]["model"]["detail"]


@pytest.mark.parametrize("block, why", [
    ({"budget": 0.02, "thresholds": dict.fromkeys(LABELS7, 0.5), "temperature": 0}, "temperature"),
    ({"budget": 2, "thresholds": dict.fromkeys(LABELS7, 0.5)}, "budget"),
    ({"budget": 0.02, "thresholds": {"kaca": 0.5}}, "one threshold for each label"),
    ({"budget": 0.02, "thresholds": dict.fromkeys(LABELS7, "high")}, r"thresholds.kaca"),
    ({"budget": 0.02, "thresholds": dict.fromkeys(LABELS7, 0.5), "ladder": 5}, "ladder must be a list"),
    ({"budget": 0.02, "thresholds": dict.fromkeys(LABELS7, 0.5), "ladder": [{"budget": 0.05}]}, r"ladder\[0\]"),
    ([1, 2], "must be an object"),
    ({"budget": 0.02, "thresholds": dict.fromkeys(LABELS7, float("nan"))}, r"thresholds.kaca.*nan"),
    ({"budget": 0.02, "thresholds": dict.fromkeys(LABELS7, 0.5), "temperature": float("nan")}, "temperature"),
    ({"budget": 0.02, "thresholds": dict.fromkeys(LABELS7, 0.5),
      "ladder": [{"budget": 0.05, "thresholds": dict.fromkeys(LABELS7, 0.3), "feasible": "no"}]},
     r"ladder\[0\].feasible must be true or false"),
    ({"budget": 0.02, "thresholds": dict.fromkeys(LABELS7, 0.5),
      "ladder": [{"budget": 0.05, "thresholds": dict.fromkeys(LABELS7, 0.3)},
                 {"budget": 0.05, "thresholds": dict.fromkeys(LABELS7, 0.0)}]},
     r"ladder\[1\].budget 0.05 repeats decision.ladder\[0\].budget"),
])
def test_a_bad_decision_block_is_refused_naming_the_field(block, why):
    from ecosorter.edge.model.manifest import Manifest

    with load_model(DEMO) as m:
        d = m.manifest.to_dict()
    d["decision"] = block
    with pytest.raises(ValueError, match=why):
        Manifest.from_json(json.dumps(d).encode())


def _weak(n: int, sep: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A weak 7-class model: the true class's logit ahead by `sep` standard deviations."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, n)
    z = rng.normal(0, 1, (n, 7))
    z[np.arange(n), y] += sep
    p = np.exp(z)
    return p / p.sum(1, keepdims=True), y


def test_a_rule_sending_most_items_to_the_fallback_is_warned_with_next_steps():
    # a weak model on 400 photos at 2%: certifiable, but most items would be uncertain
    c = th.choose(*_weak(400, 2.5), LABELS7, 0.02)
    assert c.feasible and c.certify["fallback_share"] > 0.5
    text = th.format_choice(c)
    warning = next(x.strip() for x in text.splitlines() if "WARNING" in x)
    assert warning.startswith(f"WARNING: at a 2% contamination budget the certified rule sends "
                              f"{100 * c.certify['fallback_share']:.1f}% of the {c.n_certify} certify photos to the "
                              "fallback")
    # the first point of the family sending at most half to the fallback contaminates more than 2% of
    # these photos: more photos will not certify it, a larger budget (certified on these photos) will
    j = next(i for i, p in enumerate(c.curve) if p["fallback"] <= 0.5)
    assert max(p["contamination"] for p in c.curve[:j + 1]) >= 0.02
    assert "more labelled photos will not do it at this budget" in warning
    budget = float(warning.split("--contamination ")[1].split()[0])
    assert 0.02 < budget < 0.05
    bigger = th.choose(*_weak(400, 2.5), LABELS7, budget)
    assert bigger.feasible and bigger.certify["fallback_share"] <= 0.5  # the advice holds on these photos
    assert th.report(c)["fallback_warning"] == warning

    # 80 photos at 5%: the same rates on more photos would certify it; the number is said
    few = th.choose(*_weak(80, 2.5), LABELS7, 0.05)
    w = th.fallback_warning(few)
    assert w is not None and "about " in w and f"labelled photos (now {few.n})" in w
    need = int(w.split("about ")[1].split()[0].replace(",", ""))
    assert few.n < need <= th.ADVICE_MAX_PHOTOS
    # with --fit-on photos apart, the number is of --validation photos (the fit ones are not scaled up)
    apart = th.choose(*_weak(30, 2.5), LABELS7, 0.05, fit=_weak(30, 2.5, seed=2))
    w = th.fallback_warning(apart)
    assert w is not None and f"labelled photos in --validation (now {apart.n_certify})" in w, w
    need_apart = int(w.split("about ")[1].split()[0].replace(",", ""))
    assert apart.n_certify < need_apart < apart.n  # certify photos alone: fewer than fit + certify now
    # a strong model is not warned
    good = th.choose(*_weak(200, 4.0), LABELS7, 0.05)
    assert good.certify["fallback_share"] <= 0.5 and th.fallback_warning(good) is None
    assert "WARNING" not in th.format_choice(good) and "fallback_warning" not in th.report(good)


@pytest.mark.parametrize("kw, says", [
    ({"truth": -1}, "true labels must be class indices 0..6, got -1"),
    ({"truth": 7}, "true labels must be class indices 0..6"),
    ({"temperature": 0.0}, "temperature 0.0 must be a positive number"),
    ({"temperature": float("nan")}, "temperature nan must be a positive number"),
    ({"fit_fraction": 1.0}, "fit fraction 1.0 must be between 0 and 1"),
    ({"budget": 1e-9}, "choose a larger budget"),
])
def test_choose_refuses_what_would_wrap_or_divide_by_zero(kw, says):
    """A label of -1 would wrap to the last class, a temperature of 0 give NaN thresholds; a budget
    needing over 5,000 photos is no photo count to give."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), 40)
    truth = probs.argmax(1)
    if "truth" in kw:
        truth[3] = kw.pop("truth")
    budget = kw.pop("budget", 0.05)
    if budget < 1e-6:
        probs, truth = probs[:3], truth[:3]  # too few for anything
    with pytest.raises(th.ThresholdError, match=says.replace("(", r"\(").replace(".", r"\.")):
        th.choose(probs, truth, LABELS7, budget, **kw)


def test_a_temperature_that_made_calibration_worse_is_said():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(7) * 0.3, 300)
    choice = th.choose(probs, probs.argmax(1), LABELS7, 0.05)
    # the note is there exactly when calibration got worse (an `or` let a missing note pass)
    assert ("NOTE: the temperature" in th.format_choice(choice)) == \
        (choice.calibration["ece_after"] > choice.calibration["ece_before"]), choice.calibration
    worse = dataclasses.replace(choice, calibration=choice.calibration | {"ece_before": 0.05, "ece_after": 0.09})
    assert "made calibration worse on the certify photos (ECE 0.050 -> 0.090)" in th.format_choice(worse)
