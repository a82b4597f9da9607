"""python -m benchmarks.lite0_vs_resnet50: the bundled EfficientNet-Lite0 int8 demo model against the
seed's ResNet50 int8, in one run on one machine, as ratios.

- inference: LiteRT classify() of a preprocessed photo, the two models interleaved call by call so
  that machine noise (other jobs) hits both alike; 1 thread and all cores.
- the whole loop per item: the real Sorter.process (trigger, preprocess, classify, vote, route,
  SQLite commit, board) on 640x480 frames, per model.

The ResNet50 is the seed architecture with random weights (latency does not depend on the
weights), converted by ecosorter-convert exactly as the users' model would be.
Writes docs/lite0_benchmark.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.__main__ import PHOTOS, ROOT, SAMPLES, cpu_name, loop_overhead

DEMO = ROOT / "edge" / "demo" / "demo_int8.tflite"


def interleaved(a, b, n: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append((t1 - t0) * 1000)
        tb.append((t2 - t1) * 1000)
    return float(np.median(ta)), float(np.median(tb))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--lite0", type=Path, default=DEMO)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "lite0_benchmark.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cv2
    import tf_keras

    from ecosorter.convert import convert
    from ecosorter.convert.demo.seed_model import build_seed_model
    from ecosorter.edge.backends import open_classifier
    from ecosorter.edge.model import load_model
    from ecosorter.edge.preprocess import Preprocessor, decode_image

    args.work.mkdir(parents=True, exist_ok=True)
    resnet = args.work / "seed_int8.tflite"
    if not resnet.exists():
        h5 = args.work / "seed.h5"
        build_seed_model(tf_keras).save(h5)
        convert(h5, resnet, "int8", calibration=PHOTOS, calibration_size=36, validation=PHOTOS, validation_size=12,
                force=True, min_agreement=0.0, gate="agreement", progress=False, log=lambda *a: None)
    photo = decode_image(sorted(PHOTOS.glob("*/*.jpg"))[0])
    cores = os.cpu_count() or 1
    r: dict = {"machine": f"{platform.machine()}, {cores} cores, Python {platform.python_version()}",
               "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"), "iterations": args.iterations,
               "models": {}, "inference_ms": {}, "speedup": {}}
    tensors, contents = {}, {}
    for name, path in (("lite0_int8", args.lite0), ("resnet50_int8", resnet)):
        with load_model(path) as m:
            tensors[name] = Preprocessor(m.manifest.preprocess, m.manifest.input)(photo, "rgb")
            r["models"][name] = {"file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                                 "mb": round(path.stat().st_size / 1e6, 2)}
        contents[name] = path.read_bytes()
    for threads in sorted({1, cores}):
        a = open_classifier(contents["lite0_int8"], "litert", threads)
        b = open_classifier(contents["resnet50_int8"], "litert", threads)
        la, lb = interleaved(lambda a=a: a.classify(tensors["lite0_int8"]),
                             lambda b=b: b.classify(tensors["resnet50_int8"]), args.iterations)
        a.close()
        b.close()
        r["inference_ms"][f"{threads} thr"] = {"lite0_int8": round(la, 2), "resnet50_int8": round(lb, 2)}
        r["speedup"][f"{threads} thr"] = round(lb / la, 2)
    frames = [cv2.resize(np.ascontiguousarray(decode_image(p)[..., ::-1]), (640, 480))
              for p in sorted(SAMPLES.glob("*.jpg"))]
    r["loop_per_item"] = {name: loop_overhead(path, frames, args.iterations)
                          for name, path in (("lite0_int8", args.lite0), ("resnet50_int8", resnet))}
    r["loop_speedup"] = round(r["loop_per_item"]["resnet50_int8"]["loop_ms_per_item"] /
                              r["loop_per_item"]["lite0_int8"]["loop_ms_per_item"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1) + "\n")
    print(f"{r['cpu']} ({r['machine']})")
    for k, v in r["inference_ms"].items():
        print(f"inference {k:<6} Lite0 int8 {v['lite0_int8']:7.2f} ms   ResNet50 int8 {v['resnet50_int8']:7.2f} ms"
              f"   -> {r['speedup'][k]:.1f}x")
    for name, v in r["loop_per_item"].items():
        print(f"loop per item {name:<14} {v['loop_ms_per_item']:7.2f} ms (bare invoke {v['bare_invoke_ms']:.2f} ms)")
    print(f"loop speed-up {r['loop_speedup']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
