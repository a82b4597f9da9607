"""How much does each quantization mode change the seed ResNet50's answers on real photos?

The users' trained weights are not here and no ImageNet weights can be downloaded, so a model
with realistic, peaked outputs is made from the seed architecture: BatchNorm statistics
re-estimated on real photos, Dense head trained on waste7. Then every mode is converted with
ecosorter-convert and verified on held-out photos. Writes docs/int8_study.{json,md}.

    python -m benchmarks.resnet50_int8 --data ../shared/data/waste7
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "waste7")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "int8_study")
    ap.add_argument("--train", type=int, default=700)
    ap.add_argument("--held-out", type=int, default=350)
    ap.add_argument("--modes", default="float32,float16,dynamic,int8,int8-keep3")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras

    from ecosorter.convert import convert
    from ecosorter.convert.demo.seed_model import build_seed_model, reestimate_batchnorm, train_head
    from ecosorter.convert.demo.train_demo import LABELS, link_split, list_images, split
    from ecosorter.convert.images import TrainingTransform
    from ecosorter.edge.preprocess.spec import PRESETS

    args.work.mkdir(parents=True, exist_ok=True)
    paths, labels = list_images(args.data)
    rest, held = split(labels, args.held_out / len(labels), seed=3)
    rng = np.random.default_rng(3)
    train = rng.permutation(rest)[: args.train]
    calib = rng.permutation(np.setdiff1d(rest, train))[:400]
    rel = [str(p.relative_to(args.data)) for p in paths]
    calib_dir = link_split(args.data, args.work / "calibration", [rel[i] for i in calib])
    held_dir = link_split(args.data, args.work / "held_out", [rel[i] for i in held])

    t0 = time.time()
    tf_x = TrainingTransform(PRESETS["caffe"], 224, 224)
    x_train = np.stack([tf_x(paths[i]) for i in train])
    model = build_seed_model(tf_keras)
    reestimate_batchnorm(model, x_train[:256])
    train_acc = train_head(model, x_train, labels[train])
    h5 = args.work / "seed_resnet50.h5"
    model.save(h5)
    held_x = np.stack([tf_x(paths[i]) for i in held[:200]])
    peak = float(model.predict(held_x, verbose=0).max(axis=1).mean())
    print(f"head train accuracy {train_acc:.3f}; mean top-1 probability on held-out {peak:.3f}", flush=True)
    print(f"seed model prepared in {time.time() - t0:.0f}s", flush=True)

    results = {}
    for mode in args.modes.split(","):
        quant, keep = (mode.split("-keep") + ["0"])[:2]
        out = args.work / f"{mode}.tflite"
        t1 = time.time()
        r = convert(h5, out, quant, calibration=calib_dir, calibration_size=200, validation=held_dir,
                    validation_size=10_000, keep_float=int(keep), force=True, progress=False,
                    log=lambda *a: None)
        rep = r.report
        results[mode] = {k: rep.get(k) for k in ("agreement", "keras_accuracy", "tflite_accuracy", "accuracy_change",
                                                   "mean_abs_dprob", "max_abs_dprob", "latency_ms", "float_layers")}
        results[mode]["size_mb"] = round(rep["file_size_bytes"]["tflite"] / 1e6, 2)
        results[mode]["convert_s"] = round(time.time() - t1, 1)
        print(mode, json.dumps(results[mode]), flush=True)
    summary = {"labels": LABELS, "head_train_accuracy": train_acc, "mean_top1_probability_held_out": peak, "held_out_images": int(len(held)), "train_images": int(len(train)),
               "h5_mb": round(h5.stat().st_size / 1e6, 1), "modes": results}
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "int8_study.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
