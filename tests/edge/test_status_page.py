"""The kiosk page in real headless Chromium during a simulated run, plus its JSON, photos and /metrics."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.sorter import build_sorter
from ecosorter.edge.status.server import start_status_server
from tests.conftest import SAMPLES
from tests.edge.browser import Browser, dump_dom, request, screenshot

ARTIFACTS = Path(os.environ.get("ECOSORTER_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
TOKEN = "kiosk-token-0123456789"


@pytest.fixture()
def running(tmp_path, one_day):
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES), "camera.loop": True,
                                 "camera.realtime": True, "camera.fps": 8.0, "hardware.pin_factory": "mock",
                                 "hardware.led_on_s": 0.05})
    sorter = build_sorter(cfg, state_dir=tmp_path)
    flags: list[str] = []
    labels: list[tuple[str, str, str]] = []

    def on_flag(event_id: str) -> bool:  # the real sorter's flag, counted
        flags.append(event_id)
        return sorter.flag(event_id)

    def on_label(event_id: str, label: str, who: str) -> bool:  # storing it is the event log's (#11)
        labels.append((event_id, label, who))
        return bool(sorter.events.query("SELECT 1 FROM events WHERE id = ?", (event_id,)))

    server = start_status_server(sorter.board, "127.0.0.1", 0, on_flag, on_label, token=TOKEN)
    stop = threading.Event()
    t = threading.Thread(target=sorter.run, args=(stop,), daemon=True)
    t.start()
    yield sorter, f"http://127.0.0.1:{server.server_port}", flags, labels
    stop.set()
    t.join(60)  # returns when the loop ends; the limit is for a hung loop only
    server.shutdown()
    sorter.close()


def wait_for_items(sorter, n: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while sorter.summary.items < n and time.monotonic() < end:
        time.sleep(0.1)
    assert sorter.summary.items >= n


def post(base: str, path: str, body: bytes = b"", token: str = TOKEN) -> tuple[int, dict]:
    host = base.split("//", 1)[1]
    code, reply = request(base + path, "POST", body, {"Origin": f"http://{host}", "X-EcoSorter-Token": token,
                                                      "Content-Type": "application/json"})
    return code, json.loads(reply)


def test_json_metrics_photo_and_flag(running):
    sorter, base, flags, _ = running
    wait_for_items(sorter, 3)
    code, body = request(base + "/api/status")
    snap = json.loads(body)
    assert code == 200 and snap["last"]["label"] in snap["labels"] and sum(snap["today"]["counts"].values()) >= 3
    assert snap["health"]["model"]["ok"] and snap["health"]["pins"]["ok"]
    # Per compartment: what physically went where, unrouted apart; it adds up to the items decided.
    assert sum(c["count"] for c in snap["compartments"]) + snap["unrouted"] == snap["total"]
    assert snap["recent"][0]["id"] == snap["last"]["id"] and len(snap["recent"]) == min(snap["total"], 12)
    code, jpeg = request(base + f"/api/photo/{snap['last']['id']}.jpg")
    assert code == 200 and jpeg[:3] == b"\xff\xd8\xff"
    code, jpeg = request(base + "/api/last.jpg")
    assert code == 200 and jpeg[:3] == b"\xff\xd8\xff"

    from prometheus_client.parser import text_string_to_metric_families

    code, metrics = request(base + "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(metrics.decode())}
    today = {s.labels["label"]: s.value for s in families["ecosorter_items_today"].samples}
    assert code == 200 and sum(today.values()) >= 3 and set(today) == set(snap["labels"])
    assert {s.labels["part"]: s.value for s in families["ecosorter_health"].samples}["model"] == 1

    event_id = snap["last"]["id"]
    assert post(base, f"/api/flag/{event_id}") == (200, {"flagged": True})
    assert post(base, f"/api/flag/{event_id}") == (200, {"flagged": True})  # de-duplicated
    assert flags == [event_id]
    rows = sorter.events.query("SELECT flagged FROM events WHERE id = ?", (event_id,))
    assert rows[0]["flagged"] == 1
    assert post(base, f"/api/flag/{'0' * 32}") == (404, {"flagged": False})  # unknown to the event log


@pytest.mark.browser
def test_page_in_headless_chromium_shows_the_item_change(running, tmp_path):
    sorter, base, _, _ = running
    wait_for_items(sorter, 1)
    first = dump_dom(base + "/", tmp_path / "p1")
    seq1 = int(re.search(r'data-seq="(\d+)"', first).group(1))
    label1 = re.search(r'<h1 id="label">([^<]+)</h1>', first).group(1)
    assert label1 in {"Kaca", "Kardus", "Kertas", "Khusus", "Logam", "Organik", "Plastik", "Tidak yakin"}
    assert 'class="bin' in first and "chip ok" in first
    wait_for_items(sorter, sorter.summary.items + 2)
    second = dump_dom(base + "/", tmp_path / "p2")
    seq2 = int(re.search(r'data-seq="(\d+)"', second).group(1))
    assert seq2 > seq1  # the page updated itself to a later item
    screenshot(base + "/", tmp_path / "p3", ARTIFACTS / "status-page-live.png")


@pytest.mark.browser
def test_a_person_flags_and_labels_at_the_kiosk(running, tmp_path):
    """Touch "Wrong?", then "What was it?" in real Chromium: the page sends its token, same-origin."""
    sorter, base, flags, labels = running
    wait_for_items(sorter, 2)
    browser = Browser(tmp_path / "kiosk")
    try:
        browser.open(base + "/")
        event_id = browser.wait("document.body.dataset.seq && !document.getElementById('wrong').hidden"
                                " && document.querySelector('#recent .row').dataset.id")
        browser.js("document.getElementById('wrong').click()")
        assert browser.wait("!document.getElementById('panel').hidden")
        row = f"#recent .row[data-id='{event_id}']"
        assert browser.wait(f"document.querySelector(\"{row} .tag\")?.textContent") == "perlu label / needs label"
        browser.js(f"document.querySelector(\"{row} button[data-label='kertas']\").click()")
        assert browser.wait(f"document.querySelector(\"{row} .tag.done\")?.textContent") == "✓ Kertas"
    finally:
        browser.close()
    assert flags == [event_id]
    assert sorter.events.query("SELECT flagged FROM events WHERE id = ?", (event_id,))[0]["flagged"] == 1
    assert labels == [(event_id, "kertas", "page@127.0.0.1")]
    recent = {r["id"]: r for r in sorter.board.snapshot()["recent"]}
    assert recent[event_id]["flagged"] and recent[event_id]["true_label"] == "kertas"
