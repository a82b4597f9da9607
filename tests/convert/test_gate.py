"""The converter's gate judges what the bin does with the int8 model, not only top-1 agreement."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ecosorter.convert.cli import main as convert_main
from ecosorter.convert.verify import BinRules, bin_outcome, upper_binomial
from ecosorter.edge.model import load_model
from tests.conftest import DATA, LABELS7

KHUSUS = LABELS7.index("khusus")


def probs(rows: list[tuple[int, float]]) -> np.ndarray:
    """One row per (class, top probability); the rest spread evenly."""
    out = np.zeros((len(rows), 7))
    for i, (c, p) in enumerate(rows):
        out[i] = (1 - p) / 6
        out[i, c] = p
    return out


def test_clopper_pearson_upper_bound():
    assert upper_binomial(0, 10) == pytest.approx(1 - 0.05 ** (1 / 10), abs=1e-6)  # 0.2589
    p = upper_binomial(5, 10)  # the p at which seeing <= 5 of 10 has probability 5%
    assert sum(math.comb(10, i) * p ** i * (1 - p) ** (10 - i) for i in range(6)) == pytest.approx(0.05, abs=1e-6)
    assert 0.77 < p < 0.78
    assert upper_binomial(3, 3) == 1.0 and upper_binomial(0, 0) == 1.0


def test_low_margin_flips_that_land_in_the_fallback_pass():
    truth = np.array([0] * 90 + [1] * 10)
    ref = probs([(0, 0.9)] * 90 + [(1, 0.52)] * 5 + [(1, 0.9)] * 5)
    tfl = ref.copy()
    # five uncertain items flip their top-1 (kardus -> kertas at 0.5): still uncertain, still fallback
    tfl[90:95] = probs([(2, 0.5)] * 5)
    o = bin_outcome(ref, tfl, truth, LABELS7, BinRules())
    assert o["top1_flips"] == 5 and o["top1_agreement"] == 0.95 and o["compartment_agreement"] == 1.0
    assert o["correct_routing"]["change"] == 0 and o["contamination"]["change"] == 0 and o["passed"]
    # the bin decided "uncertain" under both: no decision changed, so none is listed as a flip
    assert o["decision_changes"] == 0 and o["decision_agreement"] == 1.0 and o["flip_margins"]["flips"] == []


def test_flips_are_decisions_under_the_models_thresholds_not_argmax():
    """A flip is an item the bin decides differently (label, or uncertain: thresholds, temperature and
    fallback included), which is what the int8 model changes for the bin; top-1 stays reported."""
    from ecosorter.convert.verify import format_outcome

    truth = np.array([0] * 100)
    ref = probs([(0, 0.9)] * 100)
    tfl = ref.copy()
    tfl[:3] = probs([(0, 0.6)] * 3)  # same top-1, but below kaca's own threshold: uncertain now
    tfl[3] = probs([(1, 0.3)])[0]  # top-1 flips kaca -> kardus, uncertain under both? no: Keras was sure
    rules = BinRules(class_thresholds={lb: 0.8 for lb in LABELS7})
    o = bin_outcome(ref, tfl, truth, LABELS7, rules, names=[f"p{i}.jpg" for i in range(100)])
    assert o["top1_flips"] == 1 and o["top1_agreement"] == 0.99
    assert o["decision_changes"] == 4 and o["decision_agreement"] == 0.96
    f = o["flip_margins"]
    assert {x["image"] for x in f["flips"]} == {"p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"}
    assert all(x["keras"] == "kaca" and x["tflite"] == "uncertain (khusus)" for x in f["flips"])
    assert f["below_threshold"] == 0 and f["same_compartment"] == 0 and f["max_keras_top"] == pytest.approx(0.9)
    text = format_outcome(o)
    assert "decisions changed     4 of 100" in text and "top-1 flips           1 (top-1 agreement 99.0%" in text
    # under a higher temperature the same items are judged on calibrated confidences
    hot = bin_outcome(ref, tfl, truth, LABELS7, BinRules(class_thresholds={lb: 0.8 for lb in LABELS7},
                                                         temperature=3.0))
    assert hot["decision_changes"] == 0 and hot["top1_flips"] == 1  # all uncertain under both: no change


def test_the_outcome_names_one_global_threshold_as_one_and_per_class_ones_as_per_class():
    """A global family (the converter's "thresholds: global") is one threshold for every class; the
    gate's summary must not call it per-class."""
    from ecosorter.convert.verify import format_outcome

    truth = np.array([0] * 50)
    ref = probs([(0, 0.9)] * 50)
    same = {lb: 0.939 for lb in LABELS7}
    text = format_outcome(bin_outcome(ref, ref, truth, LABELS7, BinRules(class_thresholds=same, temperature=1.04)))
    assert "bin outcome           one threshold 0.939 for every class, temperature 1.04, fallback khusus" in text
    mixed = dict(same, kaca=0.8)
    text = format_outcome(bin_outcome(ref, ref, truth, LABELS7, BinRules(class_thresholds=mixed)))
    assert "bin outcome           per-class thresholds, temperature 1, fallback khusus" in text
    one = {"kaca": 0.8}  # a config's override of one class, the rest at decision.threshold
    text = format_outcome(bin_outcome(ref, ref, truth, LABELS7, BinRules(class_thresholds=one)))
    assert "per-class thresholds" in text


def test_photo_advice_is_capped_and_int8_sources_named_only_when_the_drift_shows_them():
    from ecosorter.convert.drift import sources, summary_lines
    from ecosorter.convert.verify import ADVICE_MAX_PHOTOS, _verdict, gate_lines

    # the pilot's report: 2 photos routed worse and 1 better of 84 (-1.2 pt) against a 1-point gate
    # sits on the gate; it said "about 25,536 labelled photos would tell"
    near = _verdict(2, 1, 84, 0.01)
    assert near["verdict"] == "undecided" and near["photos_needed"] is None
    assert _verdict(1, 0, 80, 0.005)["photos_needed"] <= ADVICE_MAX_PHOTOS
    truth = np.array([0] * 84)
    ref = probs([(0, 0.95)] * 84)
    tfl = ref.copy()
    ref[83] = probs([(0, 0.3)])[0]  # uncertain under Keras (to khusus), routed right by int8
    tfl[:2] = probs([(0, 0.3)] * 2)  # two items uncertain under int8: routed worse, not contaminating
    o = bin_outcome(ref, tfl, truth, LABELS7, BinRules())
    assert (o["correct_routing"]["worse"], o["correct_routing"]["better"]) == (2, 1)
    # an int8 model whose error climbs through the depth; its float head's SOFTMAX shows the biggest "jump"
    steady = [{"op": "CONV_2D", "tensor": f"conv{i}", "error": 0.02 * (i + 1), "jump": 0.02, "float": False}
              for i in range(10)]
    steady += [{"op": "FULLY_CONNECTED", "tensor": "logits", "error": 0.25, "jump": 0.05, "float": True},
               {"op": "SOFTMAX", "tensor": "probs", "error": 0.9, "jump": 0.65, "float": True}]
    assert sources(steady) == []
    lines = gate_lines(o, "int8", steady)
    line = next(x for x in lines if x.startswith("UNDECIDED: correct-routing rule"))
    assert "25,536" not in line and f"over {ADVICE_MAX_PHOTOS:,}" in line and "would not tell" in line
    assert "SOFTMAX" not in line and "mixed precision is unlikely to help: no op stands out" in line
    summary = "\n".join(summary_lines(steady))
    assert "SOFTMAX" not in summary and "no op stands out" in summary
    # int8 that loses almost nothing on the calibration photos (what a calibration unlike the bin's
    # photos shows): the few tenths of a percent each op adds are no source to name
    small = [{**r, "error": r["error"] / 100, "jump": r["jump"] / 100} for r in steady]
    small[0]["jump"] = small[-3]["error"]  # one op "adds" all of a 0.2% error
    assert sources(small) == []
    line = next(x for x in gate_lines(o, "int8", small) if x.startswith("UNDECIDED"))
    assert "int8 adds little error on the calibration photos (0.2% at the last int8 op)" in line
    assert "CONV_2D" not in line
    # one int8 op adding most of the error is named, and --keep-float 1 is the step
    spike = [dict(r) for r in steady[:10]]
    spike[4].update(jump=0.1, error=0.2)
    for i, r in enumerate(spike[5:], start=5):
        r["error"] = 0.2 + 0.01 * (i - 4)
    assert [r["tensor"] for r in sources(spike)] == ["conv4"]
    line = next(x for x in gate_lines(o, "int8", spike) if x.startswith("UNDECIDED"))
    assert "mixed precision: --keep-float 1 keeps in float the op adding the most int8 error (CONV_2D; each adds " \
        ">= 25% of the 25% error at the last int8 op)" in line
    assert "conv4" in "\n".join(summary_lines(spike))


def test_confident_flips_that_contaminate_fail_and_are_bounded():
    truth = np.array([0] * 200)
    ref = probs([(0, 0.95)] * 200)
    tfl = ref.copy()
    tfl[:2] = probs([(4, 0.8)] * 2)  # two confident glass -> metal: contamination +1 point
    o = bin_outcome(ref, tfl, truth, LABELS7, BinRules())
    c, r = o["contamination"], o["correct_routing"]
    assert (c["worse"], c["better"], c["change"]) == (2, 0, 0.01)
    assert r["change"] == -0.01 and r["worse"] == 2
    assert not o["passed"]  # +1 point contamination > +0.5
    assert c["harm_bound_95"] == pytest.approx(2 / 200 * (2 * 1.0 - 1))  # all discordant pairs are harm
    assert o["compartment_agreement"] == 0.99 and o["flip_margins"]["max_keras_top"] == pytest.approx(0.95)
    # the same flips into a shared compartment (glass and metal share a bin) change nothing for the bin
    shared = BinRules(compartments={lb: (0 if lb in ("kaca", "logam") else i) for i, lb in enumerate(LABELS7)})
    assert bin_outcome(ref, tfl, truth, LABELS7, shared)["passed"]


def test_uncertain_items_go_to_fallback_and_per_class_thresholds_apply():
    rules = BinRules(threshold=0.55, fallback="khusus", class_thresholds={"kaca": 0.9})
    comp, confident = rules.route(probs([(0, 0.8), (1, 0.6), (1, 0.5)]), LABELS7)
    assert comp.tolist() == [KHUSUS, 1, KHUSUS] and confident.tolist() == [False, True, False]
    comp, _ = BinRules(fallback=None).route(probs([(1, 0.5)]), LABELS7)
    assert comp.tolist() == [-1]  # no fallback: not routed, never counted as a correct routing


def test_int8_conversion_reports_the_bin_outcome_and_can_fail_on_it(tiny_h5, photo_dir, tmp_path, capsys):
    out, report = tmp_path / "m8.tflite", tmp_path / "r.json"
    args = [str(tiny_h5), "-o", str(out), "--quantize", "int8", "--calibration", str(photo_dir),
            "--calibration-size", "100", "--validation", str(DATA), "--report", str(report), "--quiet"]
    assert convert_main(args + ["--threshold", "0", "--max-routing-loss", "100", "--max-contamination-gain", "100"]) == 0
    r = json.loads(report.read_text())
    o = r["bin_outcome"]
    assert r["gate"] == "outcome" and o["images"] == 36 and o["rules"]["fallback"] == "khusus"
    assert 0 <= o["correct_routing"]["keras"] <= 1 and "harm_bound_95" in o["contamination"]
    assert "correct routing" in capsys.readouterr().out
    with load_model(out) as m:
        assert m.manifest.verification["compartment_agreement"] == o["compartment_agreement"]
        assert m.manifest.verification["gate_verdict"] == o["verdict"] == "pass"
    # A gate no model can pass (int8 would have to route 50 points more items right than Keras):
    # nothing written, exit 1, the failed rule named with the next steps; --gate agreement ignores it.
    out.unlink()
    rc = convert_main(args + ["--threshold", "0", "--max-routing-loss", "-50", "--max-contamination-gain", "100"])
    text = capsys.readouterr().out
    assert rc == 1 and not out.exists()
    assert "FAILED: correct-routing rule" in text and "Next: 1)" in text and "float16" in text
    assert "agreement rule" not in text
    rc = convert_main(args + ["--gate", "agreement", "--min-agreement", "0.5", "--threshold", "0",
                              "--max-routing-loss", "-50"])
    assert rc == 0 and out.exists()


def test_agreement_is_reported_not_a_gate_unless_asked(tiny_h5, photo_dir, tmp_path, capsys):
    out, report = tmp_path / "m8.tflite", tmp_path / "r.json"
    # one of 36 photos is 2.8 points: a gate in whole photos (3 may change), as in test_retrain_loop
    args = [str(tiny_h5), "-o", str(out), "--quantize", "int8", "--calibration", str(photo_dir),
            "--calibration-size", "100", "--validation", str(DATA), "--report", str(report), "--quiet",
            "--max-routing-loss", "8.4", "--max-contamination-gain", "8.4"]
    assert convert_main(args) == 0 and out.exists()  # the gate: the bin's outcome only
    r = json.loads(report.read_text())
    assert r["passed"] and not r["agreement_gates"] and r["bin_outcome"]["verdict"] in ("pass", "unproven")
    out.unlink()
    rc = convert_main(args + ["--min-agreement", str(r["agreement"] + 1e-6)])  # asked for, and just missed
    text = capsys.readouterr().out
    assert rc == 1 and not out.exists()
    assert "FAILED: agreement rule" in text and "--min-agreement" in text


def _darkened(tmp_path):
    """Real photos at a tenth of their brightness: an int8 calibration that clips every real input."""
    from PIL import Image, ImageEnhance

    dark = tmp_path / "dark"
    for f in DATA.rglob("*.jpg"):
        d = dark / f.parent.name / f.name
        d.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            ImageEnhance.Brightness(im.convert("RGB")).enhance(0.1).save(d)
    return dark


def test_the_gate_refuses_a_bad_int8_model_for_the_right_reason(tiny_h5, tmp_path, capsys):
    out, report = tmp_path / "bad.tflite", tmp_path / "r.json"
    args = [str(tiny_h5), "-o", str(out), "--quantize", "int8", "--calibration", str(_darkened(tmp_path)),
            "--calibration-size", "100", "--validation", str(DATA), "--report", str(report), "--quiet"]
    # every item confident (threshold 0): the tiny model routes the photos it learnt right, the
    # badly calibrated int8 copy does not, and enough items for the bound to prove it
    assert convert_main(args + ["--threshold", "0"]) == 1 and not out.exists()
    text = capsys.readouterr().out
    o = json.loads(report.read_text())["bin_outcome"]
    assert o["verdict"] == "fail" and o["correct_routing"]["harm_lower_95"] > 0.01
    assert "FAILED: correct-routing rule" in text and "more photos will not change this" in text
    assert "agreement rule" not in text  # agreement is reported, the outcome judged
    # int8 matches float on its own (darkened) calibration photos: the drift analysis blames no op,
    # and the next step says where the loss is instead of naming one (it listed the float head's FULLY_CONNECTED first)
    assert "int8 adds little error on the calibration photos" in text and "calibrate on photos like the bin's" in text
    assert "keeps in float the op" not in text and "SOFTMAX" not in text
    # under the bin's default rule most of the tiny model's items are uncertain: too few discordant
    # items to judge, and the report says so instead of calling the model bad
    assert convert_main(args) == 1
    text = capsys.readouterr().out
    o = json.loads(report.read_text())["bin_outcome"]
    if o["verdict"] == "undecided":
        assert "UNDECIDED" in text and "n is too small to judge either way" in text and "labelled photos" in text


def test_verdicts_on_the_bounds_and_photos_needed():
    from ecosorter.convert.verify import _verdict, gate_lines

    assert _verdict(0, 0, 300, 0.005)["verdict"] == "pass"
    assert _verdict(1, 0, 300, 0.005)["verdict"] == "pass"  # one flip in 300: bound 0.33 pt
    bad = _verdict(20, 0, 200, 0.005)  # 10 points, lower bound far above 0.5
    assert bad["verdict"] == "fail" and bad["photos_needed"] is None
    one = _verdict(1, 0, 80, 0.005)  # the pilot's case: one flip in 80 photos is +1.25 points
    assert one["verdict"] == "undecided" and one["harm_lower_95"] < 0.005 < -one["change"]
    assert 400 < one["photos_needed"] < 2000  # at this rate about 9 flips would prove the harm
    few = _verdict(6, 0, 80, 0.005)  # 7.5 points on 80 photos: not yet proven, soon would be
    assert few["verdict"] in ("undecided", "fail")
    unproven = _verdict(2, 1, 400, 0.005)
    assert unproven["verdict"] == "unproven" and unproven["photos_needed"] > 400
    m = unproven["photos_needed"]
    from ecosorter.convert.verify import _paired

    p = _paired(round(2 * m / 400), round(m / 400), m)  # at that many photos the bound is within
    assert p["harm_bound_95"] <= 0.005
    truth = np.array([0] * 80)
    ref = probs([(0, 0.95)] * 80)
    tfl = ref.copy()
    tfl[0] = probs([(4, 0.8)])[0]
    o = bin_outcome(ref, tfl, truth, LABELS7, BinRules())
    lines = gate_lines(o, "int8")
    assert o["verdict"] == "undecided" and not o["passed"]
    assert any(x.startswith("UNDECIDED: contamination rule") and "n is too small" in x for x in lines)


def test_keep_float_advice_names_every_op_it_counts_in_the_order_the_converter_keeps_them():
    """The advice said "--keep-float 6 ... (op0, op1, op2, op3; ...)": it named 4 of the 6 ops it
    counted. Every op counted is named (or "and K more"), in the order `--keep-float N` ranks
    them (largest jump first, convert/pipeline.py), so N is the very set the advice names."""
    from ecosorter.convert.drift import diagnosis, keep_float_choice, summary_lines

    def rows(jumps: list[float]) -> list[dict]:
        out = [{"op": f"OP{i}", "tensor": f"t{i}", "error": 0.1, "jump": j, "float": False}
               for i, j in enumerate(jumps)]
        out[-1]["error"] = 0.4  # the last int8 op's error: an op is named from a jump of 0.1
        return out + [{"op": "SOFTMAX", "tensor": "probs", "error": 0.9, "jump": 0.5, "float": True}]

    # 6 ops over the bar (two tied), others below it or negative (error that shrinks again)
    six = rows([0.2, -0.3, 0.12, 0.05, 0.3, 0.12, -0.2, 0.25, 0.15, 0.01])
    found, why = diagnosis(six)
    assert [r["op"] for r in found] == ["OP4", "OP7", "OP0", "OP8", "OP2", "OP5"]
    assert "--keep-float 6 keeps in float the 6 ops adding the most int8 error (OP4, OP7, OP0, OP8, OP2, OP5; " \
        "each adds >= 25% of the 40% error at the last int8 op)" in why
    assert [r["tensor"] for r in keep_float_choice(six, 6)] == [r["tensor"] for r in found]
    listed = "\n".join(summary_lines(six))
    assert all(f" {r['op']} " in listed for r in found) and "more" not in listed

    # 10 over the bar: the advice names 8 and says "and 2 more"; so does the listing
    ten = rows([0.2, -0.9, 0.12, 0.11, 0.3, 0.12, -0.2, 0.25, 0.15, 0.13, 0.14, 0.16])
    found, why = diagnosis(ten)
    assert len(found) == 10 and why.startswith("--keep-float 10 keeps in float the 10 ops")
    assert f"({', '.join(r['op'] for r in found[:8])} and 2 more; " in why
    assert [r["tensor"] for r in keep_float_choice(ten, 10)] == [r["tensor"] for r in found]
    listed = summary_lines(ten)
    assert sum(line.startswith("  +") for line in listed) == 8 and listed[-1] == "  ... and 2 more (OP5, OP3)"
