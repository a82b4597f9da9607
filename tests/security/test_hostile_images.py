"""`ecosorter classify --json` on files that are not images a camera writes: a FIFO (nobody ever writes
to it), a device. Each must be one JSON error line naming the file, and the next image still classified."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import SAMPLES

ECOSORTER = [sys.executable, "-m", "ecosorter.edge.cli"]


def test_a_fifo_or_a_device_is_a_json_error_not_a_hang(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    good = SAMPLES / "01-kaca-trashnet-glass1.jpg"
    try:
        r = subprocess.run([*ECOSORTER, "classify", "--json", str(fifo), "/dev/zero", str(good)],
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError("classify hung on a FIFO") from None
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 1 and len(lines) == 3, r.stderr
    assert lines[0]["image"] == str(fifo) and "not a regular file" in lines[0]["error"]
    assert lines[1]["image"] == "/dev/zero" and "not a regular file" in lines[1]["error"]
    assert lines[2]["label"] == "kaca"


def test_the_folder_camera_skips_a_fifo_and_sorts_on(tmp_path):
    """The folder source decodes what it finds: a FIFO among the photos must not stall the loop."""
    import shutil

    from ecosorter.edge.config import load_config
    from ecosorter.edge.sorter import build_sorter

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(SAMPLES.glob("*.jpg"))[:3]:
        shutil.copyfile(p, photos / p.name)
    os.mkfifo(photos / "00-stuck.jpg")
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(photos),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0})
    import threading

    done: list[int] = []
    with build_sorter(cfg, state_dir=tmp_path / "state") as sorter:
        t = threading.Thread(target=lambda: done.append(sorter.run()), daemon=True)
        t.start()
        t.join(120)
        assert not t.is_alive(), "the loop stalled on a FIFO"
        assert sorter.summary.items == 3
