"""Prove the TFLite model agrees with the Keras model on real images, through the edge's own path.

The Keras model sees the training transform in float32; the TFLite model sees what the edge
will feed it (the same pixels through the edge Preprocessor, quantized when its input is int8).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecosorter.convert.images import LabelledImage, progress_bar
from ecosorter.convert.source_model import SourceModel
from ecosorter.convert.thresholds import ADVICE_MAX_PHOTOS, lower_binomial, upper_binomial
from ecosorter.edge.backends import Classifier
from ecosorter.edge.decide.thresholds import calibrate
from ecosorter.edge.decide.thresholds import confident as is_confident
from ecosorter.edge.errors import ImageError
from ecosorter.edge.model.trust import points
from ecosorter.edge.preprocess import InputSpec, Preprocessor, PreprocessSpec, decode_image


def verify(src: SourceModel, classifier: Classifier, prep: PreprocessSpec, label_ids: Sequence[str],
           images: list[LabelledImage], progress: bool = True, batch: int = 16,
           rules: BinRules | None = None, arrays: dict | None = None) -> dict:
    ref_prep = Preprocessor(prep, InputSpec(height=src.height, width=src.width))
    edge_prep = Preprocessor(prep, classifier.input)
    ref_probs, tfl_probs, kept, skipped, tfl_ms = [], [], [], [], []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            ref_probs.append(src.predict(np.stack(pending)))
            pending.clear()

    for im in progress_bar(images, "verify", progress):
        try:
            pixels = decode_image(im.path)
        except ImageError as e:
            skipped.append(str(e))
            continue
        pending.append(ref_prep(pixels, "rgb")[0])
        t0 = time.perf_counter()
        tfl_probs.append(classifier.classify(edge_prep(pixels, "rgb")))
        tfl_ms.append((time.perf_counter() - t0) * 1000)
        kept.append(im)
        if len(pending) == batch:
            flush()
    flush()
    if not kept:
        raise ValueError("no readable verification images")
    ref = np.concatenate(ref_probs)
    tfl = np.stack(tfl_probs)
    report = summarize(ref, tfl, kept, label_ids, skipped, tfl_ms, keras_latency_ms(src, ref_prep, kept[:8]))
    truth = np.array([-1 if im.label is None else im.label for im in kept])
    names = np.array([str(im.path) for im in kept])
    if arrays is not None:  # for the caller's own judgement (e.g. thresholds chosen on these photos)
        arrays.update(keras=ref, tflite=tfl, truth=truth, names=names)
    if rules is not None and (truth >= 0).any():
        known = truth >= 0
        report["bin_outcome"] = bin_outcome(ref[known], tfl[known], truth[known], label_ids, rules,
                                            names[known].tolist())
    return report


def keras_latency_ms(src: SourceModel, prep: Preprocessor, images: list[LabelledImage]) -> float:
    times = []
    for im in images:
        x = prep(decode_image(im.path), "rgb")
        t0 = time.perf_counter()
        src.predict(x)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times[1:] or times))


def summarize(ref: np.ndarray, tfl: np.ndarray, images: list[LabelledImage], label_ids: Sequence[str],
              skipped: list[str], tfl_ms: list[float], keras_ms: float) -> dict:
    k_top, t_top = ref.argmax(1), tfl.argmax(1)
    diff = np.abs(ref - tfl)
    report: dict = {
        "images": len(images),
        "skipped": skipped,
        "agreement": float((k_top == t_top).mean()),
        "mean_abs_dprob": float(diff.mean()),
        "max_abs_dprob": float(diff.max()),
        "latency_ms": {"keras_predict_p50": round(keras_ms, 2),
                       "tflite_p50": round(float(np.median(tfl_ms)), 2)},
        "disagreements": [
            {"image": str(im.path), "keras": label_ids[a], "tflite": label_ids[b]}
            for im, a, b in zip(images, k_top, t_top, strict=True) if a != b][:25],
    }
    truth = np.array([-1 if im.label is None else im.label for im in images])
    known = truth >= 0
    if known.any():
        y = truth[known]
        report["keras_accuracy"] = float((k_top[known] == y).mean())
        report["tflite_accuracy"] = float((t_top[known] == y).mean())
        report["accuracy_change"] = report["tflite_accuracy"] - report["keras_accuracy"]
        n = len(label_ids)
        conf = np.zeros((n, n), dtype=int)
        np.add.at(conf, (y, t_top[known]), 1)
        report["confusion"] = {"rows": "true label", "columns": "tflite prediction",
                               "labels": list(label_ids), "matrix": conf.tolist()}
        report["per_class"] = {
            label_ids[c]: {"images": int((y == c).sum()),
                           "keras_accuracy": float((k_top[known][y == c] == c).mean()),
                           "tflite_accuracy": float((t_top[known][y == c] == c).mean()),
                           "agreement": float((k_top[known][y == c] == t_top[known][y == c]).mean())}
            for c in range(n) if (y == c).any()}
    return report


def format_table(report: dict, sizes: dict) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"{'images verified':<22}{report['images']} ({len(report['skipped'])} unreadable skipped)",
        f"{'top-1 agreement':<22}{pct(report['agreement'])}",
        f"{'keras accuracy':<22}{pct(report.get('keras_accuracy'))}",
        f"{'tflite accuracy':<22}{pct(report.get('tflite_accuracy'))}",
        f"{'|dprob| mean / max':<22}{report['mean_abs_dprob']:.4f} / {report['max_abs_dprob']:.4f}",
        f"{'latency p50':<22}keras {report['latency_ms']['keras_predict_p50']:.1f} ms, "
        f"tflite {report['latency_ms']['tflite_p50']:.1f} ms",
        f"{'file size':<22}source {sizes['source'] / 1e6:.1f} MB, tflite {sizes['tflite'] / 1e6:.1f} MB "
        f"({100 * sizes['tflite'] / max(1, sizes['source']):.0f}%)",
    ]
    if "per_class" in report:
        lines.append(f"\n{'class':<10}{'n':>5}{'keras':>8}{'tflite':>8}{'agree':>8}")
        for name, c in report["per_class"].items():
            lines.append(f"{name:<10}{c['images']:>5}{pct(c['keras_accuracy']):>8}"
                         f"{pct(c['tflite_accuracy']):>8}{pct(c['agreement']):>8}")
    return "\n".join(lines)


# --- The bin's outcome: what the int8 model changes in where items end up ---------------------

@dataclass(frozen=True)
class BinRules:
    """How the bin decides (edge/decide/vote.py): below its class's threshold an item is uncertain
    and goes to the fallback label's compartment; compartments map labels (several may share one)."""

    threshold: float = 0.55
    fallback: str | None = "khusus"
    class_thresholds: dict[str, float] = field(default_factory=dict)
    compartments: dict[str, int] | None = None  # default: one compartment per label
    max_routing_loss: float = 0.01  # correct-routing change must be >= -1 point
    max_contamination_gain: float = 0.005  # contamination change must be <= +0.5 point
    temperature: float = 1.0  # the model's calibration (its manifest's decision block)
    decision_config: Any = None  # the bin's [decision] (--bin-config): how it combines its config and the model's

    def route(self, probs: np.ndarray, label_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(compartment, confident) per row, as the bin would route it."""
        probs = calibrate(probs, self.temperature)
        comp = self.compartments or {lb: i for i, lb in enumerate(label_ids)}
        thresholds = np.array([self.class_thresholds.get(lb, self.threshold) for lb in label_ids])
        best = probs.argmax(1)
        confident = is_confident(probs[np.arange(len(probs)), best], thresholds[best])
        fallback = comp.get(self.fallback, -1) if self.fallback else -1  # -1: not routed
        routed = np.array([comp.get(label_ids[b], -1) if ok else fallback
                           for b, ok in zip(best, confident, strict=True)])
        return routed, confident


def _paired(worse: int, better: int, n: int) -> dict:
    """A paired change from discordant pairs: `worse` items the int8 model got worse, `better` ones
    it got better. Estimate (better - worse) / n; given the m = worse + better discordant items, the
    95% bound on the harm is (m / n) * (2 * p_up - 1), p_up the upper bound on worse / m."""
    m = worse + better
    harm_bound = (m / n) * (2 * upper_binomial(worse, m) - 1) if m else 0.0
    harm_low = (m / n) * (2 * lower_binomial(worse, m) - 1) if m else 0.0
    return {"worse": worse, "better": better, "change": (better - worse) / n, "harm_bound_95": harm_bound,
            "harm_lower_95": harm_low}


def _verdict(worse: int, better: int, n: int, tolerance: float) -> dict:
    """Judge one rule on its 95% bounds: pass (upper bound on the harm within the tolerance), fail
    (lower bound beyond it), else n is too small: `unproven` when the estimate is within, `undecided`
    when it is not. `photos_needed`: labelled photos with which, at the same rates, it would be told;
    None when even ADVICE_MAX_PHOTOS would not (the estimate sits on the gate)."""
    p = _paired(worse, better, n)
    harm = -p["change"]
    if p["harm_bound_95"] <= tolerance:
        verdict = "pass"
    elif p["harm_lower_95"] > tolerance:
        verdict = "fail"
    else:
        verdict = "unproven" if harm <= tolerance else "undecided"
    needed = None
    if verdict in ("unproven", "undecided") and n < ADVICE_MAX_PHOTOS:
        def told(m: int) -> bool:
            q = _paired(round(worse * m / n), round(better * m / n), m)
            return q["harm_bound_95"] <= tolerance if verdict == "unproven" else q["harm_lower_95"] > tolerance
        hi = n
        while hi < ADVICE_MAX_PHOTOS and not told(hi):
            hi = min(2 * hi, ADVICE_MAX_PHOTOS)
        if told(hi):
            lo = hi // 2 if hi > n else n
            while hi - lo > max(1, lo // 50):  # 2% is close enough for a photo count
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if told(mid) else (mid, hi)
            needed = hi
    return {**p, "tolerance": tolerance, "verdict": verdict, "photos_needed": needed}


UNCERTAIN = -1  # a decision: not confident, so the fallback's compartment


def bin_outcome(ref: np.ndarray, tfl: np.ndarray, truth: np.ndarray, label_ids: Sequence[str],
                rules: BinRules, names: Sequence[str] | None = None) -> dict:
    """Correct routing and contamination (confident but wrong compartment) for Keras vs TFLite on
    labelled photos; the items whose *decision* changed (a label, or uncertain: the bin's own rule,
    thresholds and fallback included), with Keras's calibrated confidence on them; `passed` judges
    the estimates against the rules. `names`: the photos, for the listing."""
    comp = rules.compartments or {lb: i for i, lb in enumerate(label_ids)}
    want = np.array([comp.get(label_ids[t], -2) for t in truth])
    k_comp, k_conf = rules.route(ref, label_ids)
    t_comp, t_conf = rules.route(tfl, label_ids)
    k_ok, t_ok = k_comp == want, t_comp == want
    k_bad, t_bad = k_conf & ~k_ok, t_conf & ~t_ok
    n = len(truth)
    routing = _verdict(int((k_ok & ~t_ok).sum()), int((~k_ok & t_ok).sum()), n, rules.max_routing_loss)
    contamination = _verdict(int((~k_bad & t_bad).sum()), int((k_bad & ~t_bad).sum()), n,
                             rules.max_contamination_gain)
    contamination["change"] = -contamination["change"]  # a gain in contamination is the harm
    # what the bin decides: the top label when confident, else uncertain (temperature keeps the order)
    k_dec = np.where(k_conf, ref.argmax(1), UNCERTAIN)
    t_dec = np.where(t_conf, tfl.argmax(1), UNCERTAIN)
    changed = np.flatnonzero(k_dec != t_dec)
    k_cal = calibrate(ref, rules.temperature).max(1)

    def said(d: int) -> str:
        return f"uncertain ({rules.fallback or 'not routed'})" if d == UNCERTAIN else label_ids[d]

    flips = [{**({"image": str(names[i])} if names is not None else {}), "keras": said(k_dec[i]),
              "tflite": said(t_dec[i]), "keras_confidence": float(k_cal[i]),
              "keras_uncertain": bool(not k_conf[i]), "same_compartment": bool(k_comp[i] == t_comp[i])}
             for i in changed]
    top1 = ref.argmax(1) != tfl.argmax(1)
    verdicts = {routing["verdict"], contamination["verdict"]}
    verdict = next(v for v in ("fail", "undecided", "unproven", "pass") if v in verdicts)
    return {
        "images": n,
        "rules": {"threshold": rules.threshold, "fallback": rules.fallback,
                  "class_thresholds": dict(rules.class_thresholds), "compartments": comp,
                  "temperature": rules.temperature,
                  "max_routing_loss": rules.max_routing_loss,
                  "max_contamination_gain": rules.max_contamination_gain},
        "correct_routing": {"keras": float(k_ok.mean()), "tflite": float(t_ok.mean()), **routing},
        "contamination": {"keras": float(k_bad.mean()), "tflite": float(t_bad.mean()), **contamination},
        "compartment_agreement": float((k_comp == t_comp).mean()),
        "decision_changes": len(changed),
        "decision_agreement": float((k_dec == t_dec).mean()) if n else 1.0,
        "top1_flips": int(top1.sum()),  # reported as before; the bin acts on decisions, not on argmax
        "top1_agreement": float((~top1).mean()) if n else 1.0,
        "flip_margins": {
            "of": "items whose decision changed (label or uncertain, under the bin's thresholds)",
            "max_keras_top": max((f["keras_confidence"] for f in flips), default=None),
            "below_threshold": sum(f["keras_uncertain"] for f in flips),
            "same_compartment": sum(f["same_compartment"] for f in flips),
            "flips": sorted(flips, key=lambda f: -f["keras_confidence"])[:25]},
        "bound_method": "95% one-sided Clopper-Pearson bounds from the discordant pairs (harm_bound_95, "
                        "harm_lower_95): pass when the upper bound is within the gate, fail when the lower bound "
                        "is beyond it, otherwise n is too small to tell (unproven / undecided)",
        "verdict": verdict,
        "passed": verdict in ("pass", "unproven"),
    }


def format_outcome(o: dict) -> str:
    r, c = o["correct_routing"], o["contamination"]
    fm = o["flip_margins"]
    top = "-" if fm["max_keras_top"] is None else f"{fm['max_keras_top']:.2f}"
    rules = o["rules"]
    ths = rules["class_thresholds"]
    t = f"temperature {rules.get('temperature', 1.0):g}"
    if not ths:
        rule = f"threshold {rules['threshold']:g}"
    elif len(set(ths.values())) == 1 and set(ths) >= set(rules.get("compartments") or ths):
        # a global family is written as the same threshold for every class: say so, as the converter did
        rule = f"one threshold {next(iter(ths.values())):.3g} for every class, {t}"
    else:
        rule = f"per-class thresholds, {t}"
    return "\n".join([
        f"{'bin outcome':<22}{rule}, fallback {rules['fallback']}; {o['images']} labelled photos",
        f"{'correct routing':<22}{100 * r['keras']:.1f}% -> {100 * r['tflite']:.1f}% "
        f"({points(100 * r['change'])} pt; {r['worse']} worse, {r['better']} better; 90% range "
        f"{points(-100 * r['harm_bound_95'])}..{points(-100 * r['harm_lower_95'])} pt; gate >= "
        f"{-100 * rules['max_routing_loss']:.1f} pt: {r['verdict']})",
        f"{'contamination':<22}{100 * c['keras']:.1f}% -> {100 * c['tflite']:.1f}% "
        f"({points(100 * c['change'])} pt; {c['worse']} worse, {c['better']} better; 90% range "
        f"{points(100 * c['harm_lower_95'])}..{points(100 * c['harm_bound_95'])} pt; "
        f"gate <= +{100 * rules['max_contamination_gain']:.1f} pt: {c['verdict']})",
        f"{'same compartment':<22}{100 * o['compartment_agreement']:.1f}%",
        f"{'decisions changed':<22}{o['decision_changes']} of {o['images']} (Keras confidence max {top}; "
        f"{fm['below_threshold']} uncertain under Keras, {fm['same_compartment']} to the same compartment)",
        f"{'top-1 flips':<22}{o['top1_flips']} (top-1 agreement {100 * o['top1_agreement']:.1f}%; "
        "a flip the thresholds absorb changes nothing for the bin)",
    ])


RULES = (("correct_routing", "correct-routing rule", "max_routing_loss", -1),
         ("contamination", "contamination rule", "max_contamination_gain", 1))


def gate_lines(o: dict, mode: str, drift_rows: list[dict] | None = None) -> list[str]:
    """One line per rule not passed: what failed, by how much, and the next steps in order. Mixed
    precision names ops only where the drift analysis (`drift_rows`, convert/drift.py) finds some
    that add the error; where it finds none it says that keeping ops in float is unlikely to help."""
    from ecosorter.convert.drift import diagnosis

    if drift_rows is None:
        mixed = "mixed precision: keep the ops that add the most int8 error in float (--keep-float N)"
    else:
        found, why = diagnosis(drift_rows)
        mixed = f"mixed precision: {why}" if found else f"mixed precision is unlikely to help: {why}"
    lines = []
    for key, name, tol_key, sign in RULES:
        r = o[key]
        v = r["verdict"]
        if v == "pass":
            continue
        lo, hi = sorted((sign * 100 * r["harm_lower_95"], sign * 100 * r["harm_bound_95"]))
        what = (f"{name}: {mode} changes {key.replace('_', ' ')} by {points(100 * r['change'])} pt on {o['images']} "
                f"photos (90% range {points(lo)}..{points(hi)} pt), gate {'>=' if sign < 0 else '<='} "
                f"{points(sign * 100 * o['rules'][tol_key])} pt")
        need = r["photos_needed"]
        more = (f"about {need:,} labelled photos (--validation DIR) would tell at these rates" if need else
                f"more labelled photos would not tell: at these rates it would take over {ADVICE_MAX_PHOTOS:,} "
                "(the estimate sits near the gate)")
        steps = f"Next: 1) {more}; 2) {mixed}; 3) --quantize float16"
        if v == "fail":
            lines.append(f"FAILED: {what}: the model changes what the bin does. Next: 1) more photos will not "
                         f"change this (the bound is already outside); 2) {mixed}; 3) --quantize float16")
        elif v == "undecided":
            lines.append(f"UNDECIDED: {what}: n is too small to judge either way (not proven bad, not proven "
                         f"good); nothing written. {steps}")
        else:
            lines.append(f"NOTE: {what}: within the gate on the estimate, but n is too small to prove it; "
                         f"{more}")
    return lines
