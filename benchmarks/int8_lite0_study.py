"""python -m benchmarks.int8_lite0_study --demo build/demo: int8 on the pretrained Lite0 demo model.

Every row is one ecosorter-convert run of the same Keras model (build/demo/demo.h5 from
convert/demo/train_demo.py), verified on the same held-out photos (build/demo/held_out) under the
bin's default rules (threshold 0.55, fallback khusus): calibration size and source, per-channel vs
per-tensor weights, the ops with the largest accumulated int8 error kept in float.
Writes docs/int8_study_lite0.json; docs/int8_study.md has the table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.__main__ import PHOTOS, ROOT

ROWS = [
    ("300 training photos, per-channel (the demo's conversion)", {"calibration_size": 300}),
    ("100 training photos", {"calibration_size": 100}),
    ("1000 training photos", {"calibration_size": 1000}),
    ("36 photos from another source (tests/data/waste6)", {"calibration": PHOTOS, "calibration_size": 36}),
    ("300 training photos, per-tensor weights", {"calibration_size": 300, "per_channel": False}),
    ("300 training photos, 2 worst ops in float (--keep-float 2)", {"calibration_size": 300, "keep_float": 2}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, default=ROOT / "build" / "demo")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "int8_study_lite0.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from ecosorter.convert import convert

    rows = []
    for name, opts in ROWS:
        opts = {"calibration": args.demo / "train", **opts}
        with tempfile.TemporaryDirectory() as tmp:
            r = convert(args.demo / "demo.h5", Path(tmp) / "m.tflite", "int8", validation=args.demo / "held_out",
                        validation_size=10_000, force=True, progress=False, log=lambda *a: None, **opts).report
        o = r["bin_outcome"]
        row = {"row": name, "calibration": str(opts["calibration"]), "calibration_size": opts["calibration_size"],
               "per_channel": opts.get("per_channel", True), "float_layers": r["float_layers"],
               "images": r["images"], "agreement": r["agreement"], "keras_accuracy": r["keras_accuracy"],
               "int8_accuracy": r["tflite_accuracy"], "mean_abs_dprob": r["mean_abs_dprob"],
               "correct_routing": o["correct_routing"], "contamination": o["contamination"],
               "compartment_agreement": o["compartment_agreement"], "flips": o["top1_flips"],
               "flip_max_keras_top": o["flip_margins"]["max_keras_top"], "gate_passed": r["passed"],
               "bytes": r["file_size_bytes"]["tflite"]}
        if "int8_drift" in r:
            row["worst_ops"] = [{"tensor": d["tensor"], "jump": d["jump"]} for d in
                                sorted(r["int8_drift"], key=lambda d: -d["jump"])[:5]]
        rows.append(row)
        print(f"{name:<62} agree {100 * row['agreement']:.1f}%  acc {100 * row['keras_accuracy']:.1f}% -> "
              f"{100 * row['int8_accuracy']:.1f}%  routing {100 * o['correct_routing']['change']:+.1f} pt  "
              f"contamination {100 * o['contamination']['change']:+.1f} pt  same comp. "
              f"{100 * o['compartment_agreement']:.1f}%  {row['bytes'] / 1e6:.2f} MB", flush=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
