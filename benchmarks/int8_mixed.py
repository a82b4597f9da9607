"""python -m benchmarks.int8_mixed --model build/demo/demo.h5 --calibration build/demo/train
--validation build/demo/validation: int8 schemes of one Keras model, one run, as ratios.

Each scheme is one `ecosorter-convert --quantize int8` run (force: every file is measured, and
whether the default outcome gate passed is recorded), verified on the same labelled photos under
the bin's default rules. Latency: LiteRT classify() of a preprocessed photo through the edge's own
loader and preprocessor, the schemes interleaved call by call (machine noise hits all alike), the
median over --iterations, as a ratio to plain int8 in the same run.
Writes docs/int8_mixed.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.__main__ import ROOT, cpu_name

# name -> convert() options
SCHEMES = {
    "int8": {"float_ops": "none"},
    "int8, projection convs in float (--float-ops auto)": {"float_ops": "auto"},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--calibration", type=Path, required=True)
    ap.add_argument("--calibration-size", type=int, default=100)
    ap.add_argument("--validation", type=Path, required=True)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline", type=Path, help="another .tflite timed in the same loop (e.g. the Lite0 demo)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "int8_mixed.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from ecosorter.convert import convert
    from ecosorter.edge.backends import open_classifier
    from ecosorter.edge.model import load_model
    from ecosorter.edge.preprocess import Preprocessor, decode_image

    r: dict = {"model": str(args.model), "cpu": cpu_name(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "date": time.strftime("%Y-%m-%d"), "iterations": args.iterations, "threads": args.threads,
               "validation": str(args.validation), "rows": []}
    photo = decode_image(sorted(args.validation.glob("*/*.jpg"))[0])
    classifiers, tensors = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in SCHEMES.items():
            out = Path(tmp) / f"{len(classifiers)}.tflite"
            rep = convert(args.model, out, "int8", calibration=args.calibration,
                          calibration_size=args.calibration_size, validation=args.validation,
                          validation_size=100_000, force=True, progress=False, log=lambda *a: None, **opts).report
            o = rep["bin_outcome"]
            r["rows"].append({"scheme": name, "images": rep["images"], "agreement": rep["agreement"],
                              "keras_accuracy": rep.get("keras_accuracy"), "int8_accuracy": rep.get("tflite_accuracy"),
                              "correct_routing": o["correct_routing"], "contamination": o["contamination"],
                              "compartment_agreement": o["compartment_agreement"], "gate_passed": rep["passed"],
                              "bytes": out.stat().st_size})
            with load_model(out) as m:
                tensors[name] = Preprocessor(m.manifest.preprocess, m.manifest.input)(photo, "rgb")
                r["rows"][-1]["input_dtype"] = m.manifest.input.dtype
            classifiers[name] = open_classifier(out.read_bytes(), "litert", args.threads)
        if args.baseline:
            with load_model(args.baseline) as m:
                tensors["baseline"] = Preprocessor(m.manifest.preprocess, m.manifest.input)(photo, "rgb")
            classifiers["baseline"] = open_classifier(args.baseline.read_bytes(), "litert", args.threads)
        fns = {n: (lambda c=c, t=tensors[n]: c.classify(t)) for n, c in classifiers.items()}
        for fn in fns.values():
            for _ in range(3):
                fn()
        times: dict[str, list[float]] = {n: [] for n in fns}
        for _ in range(args.iterations):
            for n, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[n].append((time.perf_counter() - t0) * 1000)
        for c in classifiers.values():
            c.close()
    base = float(np.median(times["int8"]))
    for row in r["rows"]:
        row["ms"] = round(float(np.median(times[row["scheme"]])), 2)
        row["latency_vs_int8"] = round(row["ms"] / base, 2)
    if args.baseline:
        b = float(np.median(times["baseline"]))
        r["baseline"] = {"file": str(args.baseline), "ms": round(b, 2)}
        for row in r["rows"]:
            row["latency_vs_baseline"] = round(row["ms"] / b, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1) + "\n")
    print(f"{r['cpu']} ({r['machine']}), {args.threads} thread(s), {args.iterations} iterations")
    for row in r["rows"]:
        o_r, o_c = row["correct_routing"], row["contamination"]
        print(f"{row['scheme']:<50} agree {100 * row['agreement']:.1f}%  routing {100 * o_r['change']:+.1f} pt  "
              f"contamination {100 * o_c['change']:+.1f} pt  {row['bytes'] / 1e6:.2f} MB  {row['ms']:.2f} ms "
              f"({row['latency_vs_int8']:.2f}x)  gate {'passes' if row['gate_passed'] else 'fails'}" +
              (f"  {row['latency_vs_baseline']:.2f}x the baseline" if args.baseline else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
