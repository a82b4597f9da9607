"""python -m benchmarks.int8_head: int8 head vs float head, and the shipped thresholds, on held-out photos.

Compares, in one run, the demo's plain int8 conversion (int8 softmax: probabilities in steps of
1/256) with the same Keras model converted with the classifier head (last dense + softmax) in
float (`ecosorter-convert --quantize int8`, default `--int8-head float`), on the 349 held-out
photos of edge/demo/demo_training.json (never trained on):

- ties: the share of photos whose top probability equals another photo's exactly (the largest
  group sharing one value, and all photos in a group of 2 or more): the photos no threshold can
  separate;
- top-1 accuracy and top-1 agreement between the two files;
- per-image inference latency (classify() only, the same tensors, interleaved), p50 and ratio;
- the bin's outcome under the thresholds shipped in --model, on the held-out photos that did not
  certify them (demo_training.json `thresholds.measured_on`; the other half certified):
  routed right, contamination with its 95% upper bound (Clopper-Pearson), fallback share, per class.

    python -m benchmarks.int8_head --baseline build/t/plain_int8.tflite [--model edge/demo/demo_int8.tflite]

Writes docs/int8_head.json. Needs ../shared/data/waste7.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.__main__ import ROOT, cpu_name
from ecosorter.convert import thresholds as th
from ecosorter.edge.decide.thresholds import calibrate
from ecosorter.edge.model import load_model
from ecosorter.edge.preprocess import Preprocessor, decode_image

DEMO = ROOT / "edge" / "demo" / "demo_int8.tflite"
SHARED = ROOT.parent / "shared" / "data" / "waste7"


def ties(top: np.ndarray) -> dict:
    _, counts = np.unique(top, return_counts=True)
    return {"distinct_top_values": int(len(counts)), "largest_tie": float(counts.max() / len(top)),
            "in_a_tie": float(counts[counts > 1].sum() / len(top))}


def run(path: Path, files: list[Path], labels: list[str]) -> tuple[np.ndarray, list[np.ndarray], object]:
    m = load_model(path)
    prep = Preprocessor(m.manifest.preprocess, m.classifier.input)
    tensors = [prep(decode_image(f), "rgb").copy() for f in files]
    return np.stack([m.classifier.classify(t) for t in tensors]).astype(np.float64), tensors, m


def outcome(probs: np.ndarray, truth: np.ndarray, labels: list[str], decision: dict) -> dict:
    t = np.array([decision["thresholds"][lb] for lb in labels])
    comp, fb = th.compartment_index(labels, None), labels.index("khusus")
    o = th.outcome(calibrate(probs, decision.get("temperature", 1.0)), truth, t, comp, fb)
    n = len(truth)
    per_class = {}
    for i, lb in enumerate(labels):
        k = truth == i
        per_class[lb] = {"n": int(k.sum()), "routed_right": float((o["routed"][k] == comp[i]).mean()),
                         "contaminating": int(o["bad"][k].sum()), "fallback": float((~o["confident"][k]).mean())}
    return {"budget": decision["budget"], "n": n, "routed_right": o["routed_right"],
            "contamination": o["contamination"], "contaminating": o["contaminating"],
            "contamination_upper_95": th.upper_binomial(o["contaminating"], n), "fallback": o["fallback"],
            "per_class": per_class}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.int8_head")
    ap.add_argument("--model", type=Path, default=DEMO, help="float head, with thresholds")
    ap.add_argument("--baseline", type=Path, required=True, help="the plain int8 conversion of the same model")
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "int8_head.json")
    args = ap.parse_args(argv)
    meta = json.loads((DEMO.parent / "demo_training.json").read_text())
    held = meta["held_out"]["files"]
    measure = set(((meta.get("thresholds") or {}).get("measured_on") or {}).get("files") or held)
    files = [args.data / f for f in held]
    probs, tensors, models = {}, {}, {}
    for name, path in (("int8 head", args.baseline), ("float head", args.model)):
        probs[name], tensors[name], models[name] = run(path, files, [])
    labels = models["float head"].manifest.label_ids
    truth = np.array([labels.index(f.split("/")[0]) for f in held])
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for i in range(len(files)):
            for name, m in models.items():
                t0 = time.perf_counter()
                m.classifier.classify(tensors[name][i])
                times[name].append(time.perf_counter() - t0)
    rows = {}
    for name, p in probs.items():
        rows[name] = {"file": str(Path(models[name].path).relative_to(ROOT)) if Path(models[name].path).is_relative_to(ROOT)
                      else str(models[name].path), "bytes": models[name].size_bytes,
                      "output_dtype": models[name].classifier.output_dtype,
                      "input_dtype": models[name].classifier.input.dtype,
                      "top1_accuracy": float((p.argmax(1) == truth).mean()), **ties(p.max(1)),
                      "latency_ms_p50": 1000 * float(np.median(times[name]))}
    base, new = rows["int8 head"], rows["float head"]
    decision = models["float head"].manifest.decision
    unseen = np.array([f in measure for f in held])  # the held-out half that did not certify the thresholds
    result = {
        "command": "python -m benchmarks.int8_head --baseline " + str(args.baseline),
        "cpu": cpu_name(), "machine": platform.machine(), "n": len(files), "latency_samples": len(times["int8 head"]),
        "models": rows, "top1_agreement": float((probs["int8 head"].argmax(1) == probs["float head"].argmax(1)).mean()),
        "latency_ratio": new["latency_ms_p50"] / base["latency_ms_p50"],
        "shipped_thresholds_on_held_out": outcome(probs["float head"][unseen], truth[unseen], labels, decision)
        if decision else None,
        # the rule a bin without thresholds uses (0.55 on raw probabilities), on the same half
        "default_rule_on_held_out": outcome(probs["float head"][unseen], truth[unseen], labels,
                                            {"budget": None, "thresholds": dict.fromkeys(labels, 0.55)}),
    }
    for m in models.values():
        m.close()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(files)} held-out photos, {result['cpu']}")
    for name, r in rows.items():
        print(f"{name:11s} {r['output_dtype']:8s} top-1 {100 * r['top1_accuracy']:.1f}%  largest tie "
              f"{100 * r['largest_tie']:.1f}%  in a tie {100 * r['in_a_tie']:.1f}%  distinct tops "
              f"{r['distinct_top_values']}  p50 {r['latency_ms_p50']:.1f} ms  {r['bytes'] / 1e6:.2f} MB")
    print(f"agreement {100 * result['top1_agreement']:.1f}%, latency ratio {result['latency_ratio']:.2f}x")
    o = result["shipped_thresholds_on_held_out"]
    if o:
        print(f"shipped thresholds ({100 * o['budget']:g}% budget): routed right {100 * o['routed_right']:.1f}%, "
              f"contamination {100 * o['contamination']:.1f}% ({o['contaminating']}/{o['n']}, 95% upper "
              f"{100 * o['contamination_upper_95']:.1f}%), fallback {100 * o['fallback']:.1f}%")
        d = result["default_rule_on_held_out"]
        print(f"default rule (0.55, raw): routed right {100 * d['routed_right']:.1f}%, contamination "
              f"{100 * d['contamination']:.1f}% ({d['contaminating']}/{d['n']}), fallback {100 * d['fallback']:.1f}%")
        for lb, c in o["per_class"].items():
            print(f"  {lb:8s} n {c['n']:3d}  right {100 * c['routed_right']:5.1f}%  contaminating "
                  f"{c['contaminating']}  fallback {100 * c['fallback']:5.1f}%")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
