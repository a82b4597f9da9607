"""The kiosk page in real headless Chromium during a simulated run, plus its JSON and /metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.sorter import build_sorter
from ecosorter.edge.status.server import start_status_server
from tests.conftest import SAMPLES

ARTIFACTS = Path(os.environ.get("ECOSORTER_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


@pytest.fixture()
def running(tmp_path):
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES), "camera.loop": True,
                                 "camera.realtime": True, "camera.fps": 8.0, "hardware.pin_factory": "mock",
                                 "hardware.led_on_s": 0.05})
    sorter = build_sorter(cfg, state_dir=tmp_path)
    server = start_status_server(sorter.board, "127.0.0.1", 0, sorter.flag)
    stop = threading.Event()
    t = threading.Thread(target=sorter.run, args=(stop,), daemon=True)
    t.start()
    yield sorter, f"http://127.0.0.1:{server.server_port}"
    stop.set()
    t.join(5)
    server.shutdown()
    sorter.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for_items(sorter, n: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while sorter.summary.items < n and time.monotonic() < end:
        time.sleep(0.1)
    assert sorter.summary.items >= n


def test_json_metrics_photo_and_flag(running):
    sorter, base = running
    wait_for_items(sorter, 2)
    code, body = get(base + "/api/status")
    snap = json.loads(body)
    assert code == 200 and snap["last"]["label"] in snap["labels"] and sum(snap["today"]["counts"].values()) >= 2
    assert snap["health"]["model"]["ok"] and snap["health"]["pins"]["ok"]
    code, jpeg = get(base + "/api/last.jpg")
    assert code == 200 and jpeg[:3] == b"\xff\xd8\xff"
    code, metrics = get(base + "/metrics")
    assert code == 200 and re.search(rb'ecosorter_items_today\{bin="ecosorter-1",label="kaca"\} \d+', metrics)
    assert b'ecosorter_health{bin="ecosorter-1",part="model"} 1' in metrics
    req = urllib.request.Request(base + f"/api/flag/{snap['last']['id']}", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read()) == {"flagged": True}
    rows = sorter.events.query("SELECT flagged FROM events WHERE id = ?", (snap["last"]["id"],))
    assert rows[0]["flagged"] == 1


@pytest.mark.browser
def test_page_in_headless_chromium_shows_the_item_change(running, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (CI installs it)")
    sorter, base = running
    wait_for_items(sorter, 1)

    def dom() -> str:
        r = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                            "--virtual-time-budget=4000", "--dump-dom", base + "/"],
                           capture_output=True, text=True, timeout=60)
        return r.stdout

    first = dom()
    seq1 = int(re.search(r'data-seq="(\d+)"', first).group(1))
    label1 = re.search(r'<h1 id="label">([^<]+)</h1>', first).group(1)
    assert label1 in {"Kaca", "Kardus", "Kertas", "Khusus", "Logam", "Organik", "Plastik"}
    assert 'class="count"' in first and "chip ok" in first
    wait_for_items(sorter, sorter.summary.items + 2)
    second = dom()
    seq2 = int(re.search(r'data-seq="(\d+)"', second).group(1))
    assert seq2 > seq1  # the page updated itself to a later item
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=800,480",
                    "--virtual-time-budget=4000", f"--screenshot={shot}", base + "/"],
                   capture_output=True, timeout=60)
    assert shot.exists() and shot.stat().st_size > 5000
