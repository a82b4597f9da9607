"""Pooled labels from real bins: real sorter runs write events and photos, `ecosorter export` writes
the folders a USB stick carries, `ecosorter fleet pool` merges them; ecosorter-train's reader takes it."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.record.export import export
from tests.conftest import SAMPLES
from tests.fleet.conftest import ECOSORTER


def run_bin(state: Path, bin_id: str) -> list[str]:
    """A bin sorts the 13 bundled photos, keeping every photo; a person labels two items. Event ids."""
    from ecosorter.edge.sorter import build_sorter

    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES), "bin_id": bin_id,
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "record.state_dir": str(state), "record.capture": "all"})
    with build_sorter(cfg) as s:
        s.run()
        ids = [r["id"] for r in s.events.query("SELECT id FROM events ORDER BY seq")]
        assert s.label(ids[0], "logam", "ana") and s.label(ids[1], "kaca", "ana")
    return ids


def rows(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    ids = {b: run_bin(root / b, b) for b in ("binA", "binB")}
    return root, ids


def test_usb_exports_pool_into_one_training_folder_deduplicated_with_bin_ids(bins, tmp_path):
    root, ids = bins
    stick = tmp_path / "usb"
    for b in ids:
        assert export(root / b, stick / b).photos == 13
    shutil.copytree(stick / "binA", stick / "binA-again")  # the same export carried twice
    out = tmp_path / "pooled"
    r = subprocess.run([*ECOSORTER, "fleet", "pool", str(out), str(stick / "binA"), str(stick / "binB"),
                        str(stick / "binA-again")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "26 photos from 2 bins" in r.stdout and "13 duplicates" in r.stdout
    pooled = rows(out)
    assert sorted(x["id"] for x in pooled) == sorted(ids["binA"] + ids["binB"])
    assert {x["bin_id"] for x in pooled} == {"binA", "binB"}
    for x in pooled:
        assert (out / x["photo"]).is_file() and x["photo"].split("/")[1].startswith(x["bin_id"] + "-")
    by_id = {x["id"]: x for x in pooled}
    assert by_id[ids["binA"][0]]["photo"].startswith("logam/") and by_id[ids["binB"][1]]["true_label"] == "kaca"

    # pooling again adds nothing; a later export with a new label moves that photo to its class
    from ecosorter.edge.record.events import EventLog

    log = EventLog(root / "binB" / "events.db")
    try:
        assert log.set_label(ids["binB"][5], "plastik", "budi")
    finally:
        log.close()
    assert export(root / "binB", tmp_path / "later").photos == 13
    r = subprocess.run([*ECOSORTER, "fleet", "pool", str(out), str(stick / "binA"), str(tmp_path / "later")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "1 photos from 1 bins" in r.stdout, r.stdout + r.stderr
    pooled = {x["id"]: x for x in rows(out)}
    assert len(pooled) == 26 and pooled[ids["binB"][5]]["photo"].startswith("plastik/binB-")
    assert len(list(out.glob("*/*.jpg"))) == 26  # the old copy was removed, not left in the wrong class

    # ecosorter-train reads it as it reads one bin's export
    pytest.importorskip("numpy")
    from ecosorter.convert.train import list_dataset

    data = list_dataset(out)
    assert len(data.files) == 26 - len(list(out.glob("_unlabeled/*.jpg"))) and "logam" in data.classes


def test_a_tampered_export_is_refused_row_by_row(bins, tmp_path):
    root, _ = bins
    exp = tmp_path / "exp"
    export(root / "binA", exp)
    text = (exp / "labels.csv").read_text().splitlines()
    first = next(csv.reader([text[1]]))
    first[0] = "../../etc/passwd.jpg"
    w = csv.writer(open(exp / "labels.csv", "w", newline=""))  # noqa: SIM115
    w.writerow(next(csv.reader([text[0]])))
    w.writerow(first)
    w.writerows(csv.reader(text[2:]))
    del w
    r = subprocess.run([*ECOSORTER, "fleet", "pool", str(tmp_path / "out"), str(exp)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "12 photos" in r.stdout
    assert "line 2: photo '../../etc/passwd.jpg'" in r.stderr


def test_online_pool_runs_the_bins_own_export_and_streams_it_back(bins, tmp_path):
    """The remote side of `--ssh`: the bin's `ecosorter export` and tar, through a transport that runs
    the remote command here (no sshd on this machine; ssh only carries the bytes)."""
    root, ids = bins
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ecosorter").write_text(f'#!/bin/sh\nexec {sys.executable} -m ecosorter.edge.cli "$@" '
                                    f'--state-dir {root / "binB"}\n')
    (shim / "ecosorter").chmod(0o755)
    (shim / "local-ssh").write_text('#!/bin/sh\nshift\nexec sh -c "$1"\n')  # "ssh HOST CMD" -> sh -c CMD
    (shim / "local-ssh").chmod(0o755)
    os.environ["PATH"] = f"{shim}:{os.environ['PATH']}"
    try:
        from ecosorter.fleet.pool import fetch_over_ssh, pool

        got = fetch_over_ssh("pi@binB.lan", tmp_path / "fetched", ssh=(str(shim / "local-ssh"),))
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
    assert got.name == "binB.lan"
    fetched = rows(got)
    import sqlite3

    db = sqlite3.connect(root / "binB" / "events.db")
    labelled = sorted(r[0] for r in db.execute("SELECT id FROM events WHERE true_label != ''"))
    db.close()
    assert len(labelled) >= 2 and sorted(x["id"] for x in fetched) == labelled  # --labeled-only by default
    n = pool(tmp_path / "out", [got])
    assert n == {"photos": len(labelled), "duplicates": 0, "bins": 1}
