"""The Python API: load a model, classify an image file or a frame."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecosorter.edge.model import LoadedModel, load_model
from ecosorter.edge.preprocess import Preprocessor, decode_image


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]
    latency_ms: float

    def to_dict(self) -> dict:
        return {"label": self.label, "confidence": round(self.confidence, 6),
                "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
                "latency_ms": round(self.latency_ms, 3)}


def predict(model: LoadedModel, preprocessor: Preprocessor, pixels: np.ndarray, order: str) -> Prediction:
    t0 = time.perf_counter()
    probs = model.classifier.classify(preprocessor(pixels, order))
    ms = (time.perf_counter() - t0) * 1000
    best = int(np.argmax(probs))
    ids = model.manifest.label_ids
    return Prediction(ids[best], float(probs[best]), {k: float(p) for k, p in zip(ids, probs, strict=True)}, ms)


def classify_image(model: LoadedModel, image: str | Path | np.ndarray, order: str = "rgb") -> Prediction:
    """Classify an image file (decoded as training did) or an H x W x 3 uint8 array in `order`."""
    pixels = decode_image(image) if not isinstance(image, np.ndarray) else image
    prep = Preprocessor(model.manifest.preprocess, model.manifest.input)
    return predict(model, prep, pixels, "rgb" if not isinstance(image, np.ndarray) else order)


__all__ = ["Prediction", "classify_image", "load_model", "predict"]
