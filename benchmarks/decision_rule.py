"""python -m benchmarks.decision_rule: the decision rule on the demo model's held-out photos.

The 349 held-out photos of edge/demo/demo_training.json (never trained on) are split in two halves,
stratified by class (seed 11). Thresholds are chosen on one half (its own fit/certify split inside,
convert/thresholds.py) and measured on the other half, which the choice never saw; then the halves
swap, and the table gives both folds' sums. Compared in the same run: the bin's old default (one
threshold 0.55 on raw probabilities) and one global threshold chosen by the same procedure.

Second table (`--splits N`, default 100): the 298 validation and 349 held-out photos pooled (647,
none trained on) and split at random N times into 298 to choose on and 349 to measure on, as the
demo's own split is: the mean and spread of what the procedure delivers, which one split cannot
tell, and how often the measured contamination exceeds the budget. Beside it the *ceiling*: the
single threshold that, chosen on all 647 photos at once (in-sample, no guarantee), routes the most
right within the budget: no threshold rule on this model's probabilities can do better.
Writes docs/decision_rule.json and prints the tables. Needs ../shared/data/waste7.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from benchmarks.__main__ import ROOT, cpu_name
from ecosorter.convert import thresholds as th
from ecosorter.convert.decision import edge_probs
from ecosorter.convert.images import LabelledImage
from ecosorter.edge.decide.thresholds import calibrate
from ecosorter.edge.model import load_model

DEMO = ROOT / "edge" / "demo" / "demo_int8.tflite"
SHARED = ROOT.parent / "shared" / "data" / "waste7"


def measure(probs, truth, labels, budgets, methods: list[str]) -> dict:
    comp, fb = th.compartment_index(labels, None), labels.index("khusus")
    halves = th.split(truth, 0.5, seed=11)
    rows = {}
    for name, budget, family, method in [("threshold 0.55 (old default)", None, "", "")] + \
            [(f"{m} {'per-class' if fam == 'per-class' else 'one global'} @ {100 * b:g}%", b, fam, m)
             for m in methods for b in budgets for fam in ("per-class", "global")]:
        agg = {"n": 0, "right": 0, "bad": 0, "fallback": 0, "fallback_wrong": 0}
        folds = []
        for a, b in (halves, halves[::-1]):
            if budget is None:
                t, temp, info = np.full(len(labels), 0.55), 1.0, {}
            else:
                c = th.choose(probs[a], truth[a], labels, budget, method=method, family=family)
                t, temp = np.array([c.thresholds[lb] for lb in labels]), c.temperature
                info = {"n_choose": c.n, "n_certify": c.n_certify, "bound": round(c.bound, 4), "feasible": c.feasible,
                        "temperature": c.temperature, "thresholds": {k: round(v, 3) for k, v in c.thresholds.items()}}
            o = th.outcome(calibrate(probs[b], temp), truth[b], t, comp, fb)
            n = len(b)
            agg["n"] += n
            agg["right"] += round(o["routed_right"] * n)
            agg["bad"] += o["contaminating"]
            agg["fallback"] += round(o["fallback"] * n)
            agg["fallback_wrong"] += round(o["fallback_wrong"] * n)
            folds.append({**info, "measured_on": n, "routed_right": o["routed_right"],
                          "contamination": o["contamination"], "fallback": o["fallback"]})
        n = agg["n"]
        rows[name] = {"budget": budget, "family": family, "method": method, "n": n, "routed_right": agg["right"] / n,
                      "contamination": agg["bad"] / n, "contaminating": agg["bad"],
                      "contamination_upper_95": th.upper_binomial(agg["bad"], n),
                      "fallback": agg["fallback"] / n, "fallback_wrong": agg["fallback_wrong"] / n, "folds": folds}
    return rows


def ceiling(probs, truth, labels, budget: float) -> dict:
    """The one threshold on raw probabilities that routes the most right with contamination <= budget,
    chosen in-sample on all photos: an upper bound for any threshold rule on this model."""
    comp, fb = th.compartment_index(labels, None), labels.index("khusus")
    best = {"routed_right": 0.0, "contamination": 0.0, "threshold": 1.0}
    for t in np.unique(probs.max(1)):
        o = th.outcome(probs, truth, np.full(len(labels), t), comp, fb)
        if o["contamination"] <= budget and o["routed_right"] > best["routed_right"]:
            best = {"routed_right": o["routed_right"], "contamination": o["contamination"], "threshold": float(t)}
    return best


def repeated(probs, truth, labels, n_choose: int, splits: int, budgets, methods) -> dict:
    """Pooled photos split at random `splits` times into n_choose to choose on and the rest to measure."""
    comp, fb = th.compartment_index(labels, None), labels.index("khusus")
    rows = {}
    for m in methods:
        for b in budgets:
            for fam in th.FAMILIES:
                got, families = [], set()
                for r in range(splits):
                    a, z = th.split(truth, n_choose / len(truth), seed=1000 + r)
                    c = th.choose(probs[a], truth[a], labels, b, method=m, family=fam, seed=r)
                    families.add(c.family)
                    o = th.outcome(calibrate(probs[z], c.temperature), truth[z], np.array(list(c.thresholds.values())),
                                   comp, fb)
                    got.append((o["routed_right"], o["contamination"], o["fallback"]))
                g = np.array(got)
                rows[f"{m} {fam} @ {100 * b:g}%"] = {
                    "method": m, "budget": b, "family": fam, "became": sorted(families), "splits": splits,
                    "n_choose": n_choose, "n_measure": len(truth) - n_choose,
                    "routed_right": float(g[:, 0].mean()), "routed_right_sd": float(g[:, 0].std()),
                    "contamination": float(g[:, 1].mean()), "contamination_sd": float(g[:, 1].std()),
                    "fallback": float(g[:, 2].mean()), "over_budget": float((g[:, 1] > b + 1e-12).mean())}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.decision_rule")
    ap.add_argument("--model", type=Path, default=DEMO)
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--budgets", default="0.01,0.02,0.05")
    ap.add_argument("--methods", default="crc,ltt")
    ap.add_argument("--splits", type=int, default=100, help="random splits of the pooled photos (0: skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "decision_rule.json")
    args = ap.parse_args(argv)
    demo = json.loads((DEMO.parent / "demo_training.json").read_text())
    files, val_files = demo["held_out"]["files"], demo["validation"]["files"]
    with load_model(args.model) as m:
        labels = m.manifest.label_ids
        images = [LabelledImage(args.data / f, labels.index(f.split("/")[0])) for f in files + val_files]
        probs_all, truth_all, _ = edge_probs(m.classifier, m.manifest, images)
    probs, truth = probs_all[:len(files)], truth_all[:len(files)]
    budgets = [float(b) for b in args.budgets.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    rows = measure(probs, truth, labels, budgets, methods)
    pooled = repeated(probs_all, truth_all, labels, len(val_files), args.splits, budgets + [0.025], methods) \
        if args.splits else {}
    ceilings = {f"{100 * b:g}%": ceiling(probs_all, truth_all, labels, b) for b in sorted({*budgets, 0.025})}
    result = {"command": "python -m benchmarks.decision_rule" + (f" --model {args.model}" if args.model != DEMO else ""),
              "model": args.model.name, "photos": len(truth), "methods": methods, "cpu": cpu_name(),
              "python": platform.python_version(), "rows": rows,
              "pooled": {"photos": len(truth_all), "validation": len(val_files), "held_out": len(files),
                         "splits": args.splits, "rows": pooled, "ceiling": ceilings}}
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{len(truth)} held-out photos, 2 folds (choose on one half, measure on the other); {cpu_name()}")
    print(f"{'rule':<34}{'routed right':>13}{'contamination':>15}{'(95% upper)':>12}{'fallback':>10}{'fb wrong':>10}")
    for name, r in rows.items():
        print(f"{name:<34}{100 * r['routed_right']:>12.1f}%{100 * r['contamination']:>14.1f}%"
              f"{100 * r['contamination_upper_95']:>11.1f}%{100 * r['fallback']:>9.1f}%{100 * r['fallback_wrong']:>9.1f}%")
    if pooled:
        print(f"\n{len(truth_all)} photos (validation + held-out) split {args.splits} times: choose on "
              f"{len(val_files)}, measure on {len(files)}; mean (sd)")
        print(f"{'rule':<28}{'became':>10}{'routed right':>17}{'contamination':>17}{'over budget':>13}")
        for name, r in pooled.items():
            print(f"{name:<28}{'/'.join(x[:9] for x in r['became']):>10}{100 * r['routed_right']:>9.1f}% "
                  f"({100 * r['routed_right_sd']:.1f}){100 * r['contamination']:>9.2f}% ({100 * r['contamination_sd']:.2f})"
                  f"{100 * r['over_budget']:>12.0f}%")
        for b, c in ceilings.items():
            print(f"ceiling @ {b}: one threshold {c['threshold']:.3f} chosen on all {len(truth_all)} photos routes "
                  f"{100 * c['routed_right']:.1f}% right at {100 * c['contamination']:.2f}% contamination")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
