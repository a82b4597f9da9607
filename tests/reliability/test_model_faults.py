"""Bad model files are refused with the exact reason; a running sorter keeps its model."""

from __future__ import annotations

import shutil

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.errors import ModelError
from ecosorter.edge.model import load_model
from ecosorter.edge.model.manifest import Label
from ecosorter.edge.model.tflite_file import read_metadata
from ecosorter.edge.preprocess.spec import PRESETS
from ecosorter.edge.sorter import build_sorter
from tests.conftest import SAMPLES

DEMO = SAMPLES.parent / "demo_int8.tflite"


def strip_manifest(data: bytes) -> bytes:
    """The same model with its manifest bytes renamed: a 'foreign' .tflite."""
    return data.replace(b"ecosorter.manifest", b"xxxxxxxxx.manifest")


@pytest.mark.parametrize("damage,reason", [
    (lambda d: d[: len(d) // 2], "truncated or corrupt TFLite file"),
    (lambda d: d[:-3000], "cannot load this model|truncated or corrupt"),
    (lambda d: d[:6], "too short for a TFLite model"),
    (lambda d: b"\0" * 4 + b"XYZW" + d[8:], "not a TFLite flatbuffer"),
    (strip_manifest, "has no EcoSorter manifest"),
    (lambda d: d.replace(b'"format": "ecosorter-manifest/1"', b'"format": "ecosorter-manifest/9"'),
     "embedded manifest is invalid"),
])
def test_damaged_models_are_refused_with_the_reason(tmp_path, damage, reason):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(damage(DEMO.read_bytes()))
    with pytest.raises(ModelError, match=reason) as e:
        load_model(bad)
    assert "bad.tflite" in str(e.value)


def test_foreign_model_needs_labels_and_preprocessing(tmp_path):
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(strip_manifest(DEMO.read_bytes()))
    assert "ecosorter.manifest" not in read_metadata(foreign.read_bytes())
    labels = [Label(x, x) for x in ["a", "b", "c"]]
    with pytest.raises(ModelError, match="3 labels but the model has 7 outputs"):
        load_model(foreign, labels=labels, preprocess=PRESETS["caffe"])
    seven = [Label(x, x) for x in "abcdefg"]
    with load_model(foreign, labels=seven, preprocess=PRESETS["caffe"]) as m:
        assert m.manifest.label_ids == list("abcdefg")


def test_model_replaced_underneath_a_running_sorter(tmp_path):
    model = tmp_path / "model.tflite"
    shutil.copy(DEMO, model)
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES), "model.path": str(model),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0})
    with build_sorter(cfg, state_dir=tmp_path / "state") as sorter:
        sha = sorter.model.sha256
        sorter.run(max_items=3)
        model.write_bytes(b"garbage written by a bad copy")  # the file is replaced mid-run
        s = sorter.run()
        assert s.items == 3 + 13 and sorter.model.sha256 == sha  # the loaded model keeps working
        sorter._swap_model(model)  # an explicit reload of the damaged file is refused
        assert sorter.model.sha256 == sha
        assert "update refused" in sorter.board.snapshot()["health"]["model"]["detail"]
