"""python -m benchmarks.decision_rule: the decision rule on the demo model's held-out photos.

The 349 held-out photos of edge/demo/demo_training.json (never trained on) are split in two halves,
stratified by class (seed 11). Thresholds are chosen on one half (its own fit/certify split inside,
convert/thresholds.py) and measured on the other half, which the choice never saw; then the halves
swap, and the table gives both folds' sums. Compared in the same run: the bin's old default (one
threshold 0.55 on raw probabilities) and one global threshold chosen by the same procedure.
Writes docs/decision_rule.json and prints a table. Needs ../shared/data/waste7.
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
    for name, budget, per_class, method in [("threshold 0.55 (old default)", None, True, "")] + \
            [(f"{m} {'per-class' if pc else 'one global'} @ {100 * b:g}%", b, pc, m)
             for m in methods for b in budgets for pc in (True, False)]:
        agg = {"n": 0, "right": 0, "bad": 0, "fallback": 0, "fallback_wrong": 0}
        folds = []
        for a, b in (halves, halves[::-1]):
            if budget is None:
                t, temp, info = np.full(len(labels), 0.55), 1.0, {}
            else:
                c = th.choose(probs[a], truth[a], labels, budget, method=method, per_class=per_class)
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
        rows[name] = {"budget": budget, "per_class": per_class, "method": method, "n": n, "routed_right": agg["right"] / n,
                      "contamination": agg["bad"] / n, "contaminating": agg["bad"],
                      "contamination_upper_95": th.upper_binomial(agg["bad"], n),
                      "fallback": agg["fallback"] / n, "fallback_wrong": agg["fallback_wrong"] / n, "folds": folds}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.decision_rule")
    ap.add_argument("--model", type=Path, default=DEMO)
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--budgets", default="0.01,0.02,0.05")
    ap.add_argument("--methods", default="crc,ltt")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "decision_rule.json")
    args = ap.parse_args(argv)
    files = json.loads((DEMO.parent / "demo_training.json").read_text())["held_out"]["files"]
    with load_model(args.model) as m:
        labels = m.manifest.label_ids
        images = [LabelledImage(args.data / f, labels.index(f.split("/")[0])) for f in files]
        probs, truth, _ = edge_probs(m.classifier, m.manifest, images)
    budgets = [float(b) for b in args.budgets.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    rows = measure(probs, truth, labels, budgets, methods)
    result = {"command": "python -m benchmarks.decision_rule" + (f" --model {args.model}" if args.model != DEMO else ""),
              "model": args.model.name, "photos": len(truth), "methods": methods, "cpu": cpu_name(),
              "python": platform.python_version(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{len(truth)} held-out photos, 2 folds (choose on one half, measure on the other); {cpu_name()}")
    print(f"{'rule':<34}{'routed right':>13}{'contamination':>15}{'(95% upper)':>12}{'fallback':>10}{'fb wrong':>10}")
    for name, r in rows.items():
        print(f"{name:<34}{100 * r['routed_right']:>12.1f}%{100 * r['contamination']:>14.1f}%"
              f"{100 * r['contamination_upper_95']:>11.1f}%{100 * r['fallback']:>9.1f}%{100 * r['fallback_wrong']:>9.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
