"""Real TensorFlow conversions of real Keras files, loaded and run in LiteRT."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecosorter.convert.cli import main as convert_main
from ecosorter.edge.model import load_model
from ecosorter.edge.model.tflite_file import read_metadata
from tests.conftest import DATA, LABELS7

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_float32_matches_keras_and_embeds_manifest(tiny_h5, tmp_path):
    out, report = tmp_path / "m.tflite", tmp_path / "r.json"
    rc = convert_main([str(tiny_h5), "-o", str(out), "--quantize", "float32", "--validation", str(DATA),
                       "--report", str(report), "--quiet"])
    assert rc == 0
    r = json.loads(report.read_text())
    assert r["agreement"] == 1.0 and r["max_abs_dprob"] < 1e-4 and r["passed"]
    assert r["images"] == 36 and r["keras_accuracy"] == r["tflite_accuracy"]
    assert set(r["per_class"]) == {"kaca", "kardus", "kertas", "khusus", "logam", "plastik"}
    with load_model(out) as m:
        man = m.manifest
        assert man.label_ids == LABELS7
        assert man.labels[0].name == "Kaca (glass)"
        assert man.preprocess.color == "bgr" and man.preprocess.mean == (103.939, 116.779, 123.68)
        assert man.source["quantization"] == "float32" and len(man.source["sha256"]) == 64
        assert man.source["format"] == "h5" and man.verification["agreement"] == 1.0
        assert m.classifier.input.dtype == "float32"


def test_int8_calibrated_on_photos_skips_corrupt_jpeg(tiny_h5, photo_dir, tmp_path, capsys):
    (photo_dir / "kaca" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out, report = tmp_path / "m8.tflite", tmp_path / "r.json"
    rc = convert_main([str(tiny_h5), "-o", str(out), "--quantize", "int8", "--calibration", str(photo_dir),
                       "--calibration-size", "100", "--validation", str(DATA), "--report", str(report),
                       "--min-agreement", "0.9", "--quiet"])
    assert rc == 0, capsys.readouterr()
    assert "skipped unreadable calibration image" in capsys.readouterr().out
    r = json.loads(report.read_text())
    assert r["agreement"] >= 0.9
    with load_model(out) as m:
        assert m.classifier.input.dtype == "int8" and m.classifier.input.quant_scale > 0
        assert m.manifest.source["calibration_images"] == 36
    assert "ecosorter.manifest" in read_metadata(out.read_bytes())


def _op_types(content: bytes) -> dict[str, list[str]]:
    """Op name -> dtypes of its outputs, read by LiteRT from the converted file."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    types = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    return {op["op_name"]: [types[i] for i in op["outputs"]] for op in interp._get_ops_details()}


def test_int8_keeps_the_head_float_for_continuous_probabilities(tiny_h5, photo_dir, tmp_path):
    # int8 body and input, the last dense + softmax in float: the probabilities are float32, not
    # steps of 1/256 (where a confident model's photos tie and no threshold separates them).
    head, plain = tmp_path / "head.tflite", tmp_path / "plain.tflite"
    common = ["--quantize", "int8", "--calibration", str(photo_dir), "--validation", str(DATA),
              "--min-agreement", "0.9", "--quiet"]
    assert convert_main([str(tiny_h5), "-o", str(head), *common]) == 0
    assert convert_main([str(tiny_h5), "-o", str(plain), *common, "--int8-head", "int8"]) == 0
    ops = _op_types(head.read_bytes())
    assert ops["FULLY_CONNECTED"] == ["float32"] and ops["SOFTMAX"] == ["float32"]
    assert "int8" in ops["CONV_2D"]  # the body stays int8
    assert _op_types(plain.read_bytes())["SOFTMAX"] == ["int8"]
    photos = sorted(DATA.glob("*/*.jpg"))[:12]
    with load_model(head) as m:
        assert m.classifier.input.dtype == "int8" and m.classifier.output_dtype == "float32"
        assert m.manifest.source["float_head"] is True
        probs = np.stack([m.classifier.classify(_tensor(m, p)) for p in photos])
    with load_model(plain) as m:
        assert m.classifier.output_dtype == "int8" and "float_head" not in m.manifest.source
        steps = np.stack([m.classifier.classify(_tensor(m, p)) for p in photos])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    on_grid = lambda a: np.isclose(a * 256, np.round(a * 256), atol=1e-3)  # noqa: E731
    assert on_grid(steps).all() and not on_grid(probs).all()


def _tensor(m, photo):
    from ecosorter.edge.preprocess import Preprocessor, decode_image

    return Preprocessor(m.manifest.preprocess, m.classifier.input)(decode_image(photo), "rgb")


@pytest.mark.parametrize("mode", ["float16", "dynamic"])
def test_other_modes_load_and_agree(tiny_h5, tmp_path, mode):
    out = tmp_path / f"{mode}.tflite"
    rc = convert_main([str(tiny_h5), "-o", str(out), "--quantize", mode, "--validation", str(DATA),
                       "--min-agreement", "0.9", "--quiet"])
    assert rc == 0
    with load_model(out) as m:
        assert m.manifest.source["quantization"] == mode


def test_gate_writes_nothing_unless_forced(tiny_h5, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    args = [str(tiny_h5), "-o", str(out), "--quantize", "float32", "--validation", str(DATA),
            "--min-agreement", "1.01", "--quiet"]
    assert convert_main(args) == 1
    assert not out.exists()
    assert "nothing written" in capsys.readouterr().out
    assert convert_main([*args, "--force"]) == 1  # written, but not verified: still not exit 0
    assert out.exists()


def test_keras3_and_savedmodel_inputs(tf, tmp_path):
    import keras

    from tests.conftest import train_tiny

    model = train_tiny(keras, size=224, epochs=2)
    model.save(tmp_path / "m.keras")
    model.export(tmp_path / "saved", format="tf_saved_model", verbose=False)
    for src in ("m.keras", "saved"):
        out = tmp_path / f"{src}.tflite"
        assert convert_main([str(tmp_path / src), "-o", str(out), "--quantize", "float32",
                             "--validation", str(DATA), "--quiet"]) == 0
        with load_model(out) as m:
            assert m.manifest.source["format"] == ("keras" if src == "m.keras" else "saved_model")


def test_inspect_prints_manifest_and_tensors(tiny_h5, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert convert_main([str(tiny_h5), "-o", str(out), "--quantize", "float32", "--validation", str(DATA),
                         "--quiet"]) == 0
    capsys.readouterr()
    assert convert_main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert '"ecosorter-manifest/1"' in text and "input    1x224x224x3 float32" in text


def _err(capsys, args) -> str:
    assert convert_main(args) == 2
    return capsys.readouterr().err


def test_bad_inputs_are_named(tiny_h5, tf, tmp_path, capsys):
    out = str(tmp_path / "o.tflite")
    assert "missing.h5: not found" in _err(capsys, [str(tmp_path / "missing.h5"), "-o", out, "--validation", str(DATA)])

    text = tmp_path / "notes.h5"
    text.write_text("these are my notes, not a model")
    assert "notes.h5: is neither HDF5" in _err(capsys, [str(text), "-o", out, "--validation", str(DATA)])

    import tf_keras

    vec = tf_keras.Sequential([tf_keras.Input((10,)), tf_keras.layers.Dense(7, activation="softmax")])
    vec.save(tmp_path / "vec.h5")
    msg = _err(capsys, [str(tmp_path / "vec.h5"), "-o", out, "--validation", str(DATA)])
    assert "is not an image classifier: found input shape (None, 10)" in msg

    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    msg = _err(capsys, [str(tiny_h5), "-o", out, "--labels", str(labels), "--validation", str(DATA)])
    assert "3 labels but" in msg and "7 outputs" in msg

    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _err(capsys, [str(tiny_h5), "-o", out, "--quantize", "int8", "--calibration", str(empty)])
    assert "empty: no images" in msg
    assert not (tmp_path / "o.tflite").exists()


def test_without_tensorflow_says_how_to_install(monkeypatch):
    import builtins

    from ecosorter.convert import tf_import

    real = builtins.__import__

    def no_tf(name, *a, **k):
        if name == "tensorflow":
            raise ImportError("No module named 'tensorflow'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tf)
    with pytest.raises(tf_import.MissingTensorFlow, match=r"pip install 'ecosorter\[convert\]'"):
        tf_import.import_tf()


def test_embedded_model_runs_identically(tiny_h5, tmp_path):
    """Embedding the manifest rewrites the flatbuffer: outputs must not change by a bit."""
    import tensorflow as tf

    from ecosorter.convert.embed import embed_metadata
    from ecosorter.convert.source_model import load_source_model
    from ecosorter.edge.backends import open_classifier

    src = load_source_model(tiny_h5)
    fn, obj = src.concrete_function()
    raw = tf.lite.TFLiteConverter.from_concrete_functions([fn], obj).convert()
    with_meta = embed_metadata(raw, b'{"x": 1}')
    x = np.random.default_rng(0).normal(0, 50, (1, 224, 224, 3)).astype(np.float32)
    a, b = open_classifier(raw).classify(x), open_classifier(with_meta).classify(x)
    assert np.array_equal(a, b)


def test_int8_drift_report_and_keep_float(tiny_h5, photo_dir, tmp_path, capsys):
    """The converter says which ops add the most int8 error and can keep them in float."""
    out, report = tmp_path / "kf.tflite", tmp_path / "r.json"
    rc = convert_main([str(tiny_h5), "-o", str(out), "--quantize", "int8", "--calibration", str(photo_dir),
                       "--calibration-size", "24", "--validation", str(DATA), "--keep-float", "1",
                       "--min-agreement", "0.5", "--report", str(report), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "keeping the 1 ops that add the most int8 error in float" in text
    assert "int8 error through the depth" in text
    r = json.loads(report.read_text())
    assert len(r["float_layers"]) == 1
    drift = r["int8_drift"]
    assert drift and all({"op", "tensor", "error", "jump"} <= set(d) for d in drift)
    from ecosorter.convert.drift import candidates

    # the int8 op adding the most error (not SOFTMAX: its error is in probabilities, its input's in logits)
    assert r["float_layers"][0] == max(candidates(drift), key=lambda d: d["jump"])["tensor"]
    with load_model(out) as m:
        assert m.manifest.source["float_layers"] == r["float_layers"]
        assert m.classifier.input.dtype == "float32"  # mixed models keep float I/O
