"""The one slow test: the seed architecture, as users save it, to int8 on real photos, in LiteRT."""

from __future__ import annotations

import numpy as np
import pytest

from ecosorter.convert import convert
from ecosorter.convert.images import TrainingTransform
from ecosorter.edge import classify_image, load_model
from ecosorter.edge.preprocess.spec import PRESETS
from tests.conftest import DATA, LABELS7

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_seed_resnet50_h5_to_int8_runs_in_litert(tmp_path, photo_dir):
    tf_keras = pytest.importorskip("tf_keras")
    from ecosorter.convert.demo.seed_model import build_seed_model, reestimate_batchnorm

    model = build_seed_model(tf_keras)
    assert [type(layer).__name__ for layer in model.layers[-2:]] == ["Flatten", "Dense"]
    assert model.layers[-1].units == 7 and model.input_shape == (None, 224, 224, 3)
    assert model.count_params() > 23_000_000
    t = TrainingTransform(PRESETS["caffe"], 224, 224)
    reestimate_batchnorm(model, np.stack([t(p) for p in sorted(DATA.glob("*/*.jpg"))]))
    h5 = tmp_path / "model.h5"
    model.save(h5)  # legacy HDF5 by tf-keras, as the Keras 2 notebook wrote it

    f32 = convert(h5, tmp_path / "f32.tflite", "float32", validation=DATA, progress=False)
    assert f32.written and f32.report["agreement"] == 1.0
    q = convert(h5, tmp_path / "int8.tflite", "int8", calibration=photo_dir, calibration_size=30,
                validation=DATA, min_agreement=0.0, gate="agreement", progress=False)  # random weights: no gate
    assert q.written
    size8, size32 = (tmp_path / "int8.tflite").stat().st_size, (tmp_path / "f32.tflite").stat().st_size
    # int8 body; the head (Dense 100352x7 + softmax) stays float for continuous probabilities: +2.1 MB
    assert size8 <= 0.26 * size32 + 3 * 100352 * 7 * 1.05, (size8, size32)
    with load_model(tmp_path / "int8.tflite", backend="litert") as m:
        assert m.classifier.runtime == "litert" and m.classifier.input.dtype == "int8"
        assert m.manifest.label_ids == LABELS7 and m.manifest.source["quantization"] == "int8"
        p = classify_image(m, sorted(DATA.glob("*/*.jpg"))[0])
        assert abs(sum(p.probabilities.values()) - 1) < 0.05
    # the report carries what a person needs to judge the int8 model
    for key in ("agreement", "keras_accuracy", "tflite_accuracy", "confusion", "mean_abs_dprob", "latency_ms"):
        assert key in q.report
