"""Prove the TFLite model agrees with the Keras model on real images, through the edge's own path.

The Keras model sees the training transform in float32; the TFLite model sees what the edge
will feed it (the same pixels through the edge Preprocessor, quantized when its input is int8).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ecosorter.convert.images import LabelledImage, progress_bar
from ecosorter.convert.source_model import SourceModel
from ecosorter.edge.backends import Classifier
from ecosorter.edge.errors import ImageError
from ecosorter.edge.preprocess import InputSpec, Preprocessor, PreprocessSpec, decode_image


def verify(src: SourceModel, classifier: Classifier, prep: PreprocessSpec, label_ids: Sequence[str],
           images: list[LabelledImage], progress: bool = True, batch: int = 16) -> dict:
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
    return summarize(ref, tfl, kept, label_ids, skipped, tfl_ms, keras_latency_ms(src, ref_prep, kept[:8]))


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
