"""`ecosorter bench`: per-stage latency percentiles on real photos, and the loop's overhead."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ecosorter.edge.model import LoadedModel
from ecosorter.edge.preprocess import Preprocessor, decode_image


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "p99": round(float(np.percentile(a, 99)), 3)}


def run_bench(model: LoadedModel, iterations: int, photos: Path) -> dict:
    files = sorted(p for p in Path(photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise ValueError(f"{photos}: no photos to benchmark with")
    frames = [np.ascontiguousarray(decode_image(f)[..., ::-1]) for f in files]  # as a camera gives: BGR
    prep = Preprocessor(model.manifest.preprocess, model.manifest.input)
    clf = model.classifier
    for f in frames[:3]:  # warm-up: first invokes allocate and pack weights
        clf.classify(prep(f, "bgr"))
    pre, inf, e2e, bare = [], [], [], []
    tensor = prep(frames[0], "bgr")
    for i in range(iterations):
        frame = frames[i % len(frames)]
        t0 = time.perf_counter()
        x = prep(frame, "bgr")
        t1 = time.perf_counter()
        clf.classify(x)
        t2 = time.perf_counter()
        pre.append((t1 - t0) * 1000)
        inf.append((t2 - t1) * 1000)
        e2e.append((t2 - t0) * 1000)
        t3 = time.perf_counter()
        clf.classify(tensor)
        bare.append((time.perf_counter() - t3) * 1000)
    return {
        "model": str(model.path), "runtime": f"{clf.runtime} {clf.version}", "threads": clf.num_threads,
        "input": f"{clf.input.height}x{clf.input.width} {clf.input.dtype}", "iterations": iterations,
        "frame": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "preprocess_ms": _pct(pre), "inference_ms": _pct(inf), "end_to_end_ms": _pct(e2e),
        "bare_classify_ms": _pct(bare),
        "overhead_vs_bare": round(float(np.median(e2e)) / float(np.median(bare)) - 1, 4),
    }
