"""The user's model is sacred (#17 item 4): retraining keeps every class of the model it starts from and
never destroys the --weights file; the converter says which preprocessing it uses and why; a --force'd
conversion says verified: false in its own manifest. Real tf-keras training, real TFLite conversion."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from ecosorter.convert.train import main as train_main
from tests.conftest import DATA, LABELS7

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
FIVE = ["kaca", "kardus", "kertas", "logam", "plastik"]  # a pilot's export: no khusus, no organik photos


def seed_layout(tf_keras, outputs: int = 7):
    """The seed's layout (backbone + Flatten + Dense softmax), small enough to train in seconds."""
    L = tf_keras.layers
    tf_keras.utils.set_random_seed(5)
    return tf_keras.Sequential([tf_keras.Input((224, 224, 3)), L.AveragePooling2D(16),
                                L.Conv2D(4, 3, name="backbone_conv"), L.Flatten(),
                                L.Dense(outputs, activation="softmax")])


def export_of(tmp_path, classes: list[str]):
    d = tmp_path / "pilot"
    for c in classes:
        shutil.copytree(DATA / c, d / c)
    return d


def test_retraining_from_a_7_class_model_on_a_5_class_export_keeps_7_and_the_original(tmp_path, capsys):
    tf_keras = pytest.importorskip("tf_keras")
    model = tmp_path / "model.h5"
    seed_layout(tf_keras).save(model)  # the user's model: 7 classes, no train.json (like the seed's)
    original = model.read_bytes()
    before = tf_keras.models.load_model(model, compile=False).layers[-1].get_weights()
    data = export_of(tmp_path, FIVE)

    # the README's recipe, -o equal to --weights: it must not destroy the user's model
    assert train_main([str(data), "-o", str(model), "--weights", str(model), "--epochs", "3", "--views", "1",
                       "--val-split", "0", "--lr", "0.05", "--quiet"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    kept = sorted(tmp_path.glob("model.before-*.h5"))
    assert len(kept) == 1 and kept[0].read_bytes() == original
    assert f"your original model is kept as {kept[0].name}" in out
    assert "its 7 classes (no model.train.json: the seed's 7 classes) are kept, in order" in out
    assert "class 'khusus' has no photos: its output is kept but never trained (its head row stays as in model.h5)" in out

    rep = json.loads((tmp_path / "model.train.json").read_text())
    assert rep["labels"] == LABELS7
    assert rep["retrained_from"] == {"file": "model.h5", "classes": LABELS7, "kept_as": kept[0].name,
                                     "head_rows_kept": ["khusus", "organik"],
                                     "validation_before": None}  # --val-split 0: no photos to measure it on
    again = tf_keras.models.load_model(model, compile=False)
    kernel, bias = again.layers[-1].get_weights()
    assert again.layers[-1].units == 7
    for c in ("khusus", "organik"):  # no photos: exactly the earlier model's rows
        i = LABELS7.index(c)
        np.testing.assert_array_equal(kernel[:, i], before[0][:, i])
        assert bias[i] == before[1][i]
    trained = [LABELS7.index(c) for c in FIVE]
    assert not np.allclose(kernel[:, trained], before[0][:, trained])  # the others did train

    # a second retraining reads the classes from the train.json now beside it; the earlier "before" stays
    assert train_main([str(data), "-o", str(tmp_path / "next.h5"), "--weights", str(model), "--epochs", "1",
                       "--views", "1", "--val-split", "0", "--quiet"]) == 0
    assert "its 7 classes (model.train.json) are kept" in capsys.readouterr().out
    assert json.loads((tmp_path / "next.train.json").read_text())["labels"] == LABELS7
    assert kept[0].read_bytes() == original

    # --classes that would drop or reorder the earlier model's classes are refused, before anything is written
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert train_main([str(data), "-o", str(model), "--weights", str(model), "--classes", ",".join(FIVE),
                       "--quiet"]) == 2
    assert "keeps its classes in their order (kaca,kardus,kertas,khusus,logam,organik,plastik)" in \
        capsys.readouterr().err
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest


def test_a_new_class_follows_the_earlier_ones(tmp_path, capsys):
    tf_keras = pytest.importorskip("tf_keras")
    base = tmp_path / "four.h5"
    seed_layout(tf_keras, 4).save(base)
    (tmp_path / "four.train.json").write_text(json.dumps({"labels": ["logam", "kaca", "kertas", "kardus"],
                                                          "preprocess": "caffe"}))
    data = export_of(tmp_path, ["kaca", "kardus", "plastik"])
    out = tmp_path / "five.h5"
    assert train_main([str(data), "-o", str(out), "--weights", str(base), "--epochs", "1", "--views", "1",
                       "--val-split", "0", "--quiet"]) == 0
    assert "new classes after the earlier model's: plastik" in capsys.readouterr().out
    rep = json.loads((tmp_path / "five.train.json").read_text())
    assert rep["labels"] == ["logam", "kaca", "kertas", "kardus", "plastik"]
    assert rep["retrained_from"]["head_rows_kept"] == ["logam", "kertas"] and rep["retrained_from"]["kept_as"] is None
    assert not list(tmp_path.glob("four.before-*"))  # -o was another file: nothing to keep


def test_the_converter_says_which_preprocessing_and_where_it_came_from(tiny_h5, tmp_path):
    from ecosorter.convert import convert
    from ecosorter.convert.pipeline import choose_preprocess
    from ecosorter.convert.source_model import load_source_model

    lines: list[str] = []
    h5 = tmp_path / "tiny.h5"
    shutil.copy(tiny_h5, h5)
    r = convert(h5, tmp_path / "t.tflite", "float32", validation=DATA, progress=False, log=lines.append)
    assert r.written and "preprocessing: caffe (from the seed default)" in lines
    assert any(line.startswith("WARNING: no tiny.train.json beside tiny.h5") for line in lines)
    assert r.manifest.source["preprocess_from"] == "the seed default"

    (tmp_path / "tiny.train.json").write_text(json.dumps({"labels": LABELS7, "preprocess": "caffe"}))
    lines.clear()
    r = convert(h5, tmp_path / "t.tflite", "float32", validation=DATA, progress=False, log=lines.append)
    assert "preprocessing: caffe (from tiny.train.json)" in lines and not any("WARNING" in x for x in lines)

    # A Lite0 without its train.json: the layers say what it is, and so its transform ("tf")
    import tf_keras

    from ecosorter.convert import efficientnet_lite as lite

    base = lite.build(tf_keras, include_top=False)
    lite0 = tf_keras.Model(base.input, tf_keras.layers.Dense(7, activation="softmax")(base.output))
    lite0.save(tmp_path / "lite.h5")
    src = load_source_model(tmp_path / "lite.h5")
    assert src.architecture() == "efficientnet-lite0"
    lines.clear()
    assert choose_preprocess(src, None, None, lines.append) == ("tf", "the architecture: lite.h5 is "
                                                                      "efficientnet-lite0 (no lite.train.json)")
    lines.clear()
    choose_preprocess(src, "caffe", None, lines.append)  # told otherwise: done, with a warning
    assert lines[0].startswith("WARNING: preprocessing caffe from --preprocess, but the layers look like "
                               "efficientnet-lite0, trained with tf")


def test_a_forced_conversion_says_verified_false_and_a_passed_one_true(tiny_h5, tmp_path):
    from ecosorter.convert.cli import main as convert_main
    from ecosorter.edge.model.loader import load_model
    from ecosorter.edge.model.trust import verification_status

    ok, forced = tmp_path / "ok.tflite", tmp_path / "forced.tflite"
    common = [str(tiny_h5), "--quantize", "float32", "--validation", str(DATA), "--quiet"]
    assert convert_main([*common, "-o", str(ok)]) == 0
    # a gate nothing can pass: refused without --force, written with it, and marked
    assert convert_main([*common, "-o", str(forced), "--min-agreement", "1.01"]) == 1 and not forced.exists()
    assert convert_main([*common, "-o", str(forced), "--min-agreement", "1.01", "--force"]) == 1
    with load_model(ok) as m:
        assert m.manifest.verification["verified"] is True and verification_status(m.manifest)[0]
        # judged by the outcome gate: no agreement minimum is shown, as if it had been a gate
        assert "min_agreement" not in m.manifest.verification and "(min" not in verification_status(m.manifest)[1]
    with load_model(forced) as m:
        v = m.manifest.verification
        assert v["verified"] is False and v["failed"] == ["agreement 100.0% < 101.0%"]
        verified, line = verification_status(m.manifest)
        assert not verified and line.startswith("FAILED at conversion (verified: false) (agreement 100.0% < 101.0%): "
                                                "36 images, agreement 100.0% (min 101.0%)")


def _predict(model_path, files, preset_name="caffe"):
    import tf_keras

    from ecosorter.edge.preprocess import InputSpec, Preprocessor, decode_image
    from ecosorter.edge.preprocess.spec import preset

    model = tf_keras.models.load_model(model_path, compile=False)
    prep = Preprocessor(preset(preset_name), InputSpec(224, 224))
    return model.predict(np.concatenate([prep(decode_image(f), "rgb") for f in files]), verbose=0).argmax(1)


def test_retraining_reports_accuracy_with_its_range_and_the_starting_models_on_the_same_photos(tmp_path, capsys):
    """#17: the validation accuracy with a 95% interval, the model it started from measured on the same
    photos (recorded as retrained_from.validation_before), and what to do when they cannot be told apart."""
    tf_keras = pytest.importorskip("tf_keras")
    from ecosorter.convert.thresholds import lower_binomial, upper_binomial
    from ecosorter.convert.verify import _verdict

    start = tmp_path / "model.h5"
    seed_layout(tf_keras).save(start)
    original = tmp_path / "original.h5"
    shutil.copy(start, original)
    data = export_of(tmp_path, FIVE)
    out = tmp_path / "model.h5"  # -o is --weights: the starting model is measured before it is replaced
    assert train_main([str(data), "-o", str(out), "--weights", str(start), "--epochs", "20", "--views", "2",
                       "--val-split", "0.34", "--lr", "0.01", "--seed", "2", "--quiet"]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    rep = json.loads((tmp_path / "model.train.json").read_text())
    files = [data / f for f in rep["split"]["validation"]]
    truth = np.array([LABELS7.index(f.parent.name) for f in files])
    n = len(truth)
    assert n == 10

    after, before = _predict(out, files), _predict(original, files)
    k_after, k_before = int((after == truth).sum()), int((before == truth).sum())

    def shown(k: int) -> str:
        lo, hi = lower_binomial(k, n, 0.025), upper_binomial(k, n, 0.025)
        return f"{100 * k / n:.1f}% (95% range {100 * lo:.1f}..{100 * hi:.1f}%, n {n})"

    assert f"validation accuracy {shown(k_after)}" in text
    kept = rep["retrained_from"]["kept_as"]  # model.h5 is the new model now: the start is named by its copy
    assert kept.startswith("model.before-") and (tmp_path / kept).is_file()
    assert f"starting model {kept} on the same photos: {shown(k_before)}" in text
    v = rep["retrained_from"]["validation_before"]
    assert (v["images"], v["correct"], v["preprocess"]) == (n, k_before, "caffe")
    assert v["accuracy"] == pytest.approx(k_before / n)
    assert v["range_95"] == pytest.approx([lower_binomial(k_before, n, 0.025), upper_binomial(k_before, n, 0.025)],
                                          abs=1e-4)
    worse = int(((before == truth) & (after != truth)).sum())
    better = int(((before != truth) & (after == truth)).sum())
    assert (v["worse"], v["better"]) == (worse, better) and worse + better > 0  # the two differ somewhere
    assert rep["validation"]["correct"] == k_after
    verdict = _verdict(worse, better, n, 0.0)
    change = f"retraining changed accuracy by {100 * (better - worse) / n:+.1f} pt ({better} photos better, {worse} worse"
    assert change in text
    if verdict["verdict"] in ("unproven", "undecided"):  # 10 photos: the usual case
        assert f"{n} validation photos are too few to tell the two apart" in text
        need = verdict["photos_needed"]
        assert (f"about {need:,} validation photos would tell" if need else "more photos would not tell") in text
    else:
        assert "too few to tell" not in text


def test_a_worse_retrained_model_names_the_file_that_still_holds_the_start(tmp_path):
    """With -o equal to --weights the old name holds the new, worse model: "keep" must name the copy."""
    from pathlib import Path

    from ecosorter.convert.train import accuracy_lines

    n = 60
    truth = np.arange(n) % 7
    before_pred = truth.copy()  # the start got every photo right
    pred = truth.copy()
    pred[:30] = (truth[:30] + 1) % 7  # the retrained one gets half of them wrong
    before = {"correct": n}
    lines = accuracy_lines({}, truth, pred, before, before_pred, Path("model.before-20261207-173650.h5"))
    assert lines[1].startswith("starting model model.before-20261207-173650.h5 on the same photos: 100.0%")
    assert lines[2].startswith("WARNING: retraining changed accuracy by -50.0 pt (0 photos better, 30 worse")
    assert "keep model.before-20261207-173650.h5 (ecosorter-convert only the model you mean to install)" in lines[2]
    assert (before["worse"], before["better"]) == (30, 0)


def test_a_failure_or_ctrl_c_while_choosing_thresholds_keeps_the_trained_model(tmp_path, capsys, monkeypatch):
    """#17: the model is saved (durably) before thresholds are chosen; what goes wrong there is said,
    and the saved model and its train.json stay. The failure is injected where thresholds are chosen."""
    tf_keras = pytest.importorskip("tf_keras")
    from ecosorter.convert import decision

    start = tmp_path / "start.h5"
    seed_layout(tf_keras).save(start)
    data = export_of(tmp_path, FIVE)
    args = [str(data), "--weights", str(start), "--epochs", "1", "--views", "1", "--val-split", "0.34",
            "--contamination", "0.05", "--quiet"]

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(decision, "choose_block", interrupted)
    out = tmp_path / "new.h5"
    assert train_main([*args, "-o", str(out)]) == 130
    text, err = capsys.readouterr()
    assert f"interrupted after training: the trained model is saved as {out} with new.train.json (no thresholds" \
        in text and "interrupted" in err and "Traceback" not in err
    model = tf_keras.models.load_model(out, compile=False)
    assert model.output_shape == (None, 7)
    rep = json.loads((tmp_path / "new.train.json").read_text())
    assert rep["labels"] == LABELS7 and rep["validation"]["images"] == 10 and "decision" not in rep
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".new", ".tmp"))]  # no temporary left

    def broken(*_a, **_k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(decision, "choose_block", broken)
    out2 = tmp_path / "new2.h5"
    assert train_main([*args, "-o", str(out2)]) == 0
    text = capsys.readouterr().out
    assert f"warning: no thresholds written (RuntimeError: out of memory); the trained model is saved as {out2}" \
        in text
    assert tf_keras.models.load_model(out2, compile=False).output_shape == (None, 7)
    assert json.loads((tmp_path / "new2.train.json").read_text())["labels"] == LABELS7

    # a budget that is no share is refused before any training
    assert train_main([*args, "-o", str(tmp_path / "x.h5"), "--contamination", "2"]) == 2
    assert "--contamination 2.0: a share between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
