"""The history page against an event log that holds what the bin never writes (a damaged or edited
events.db: the log is not trusted): one bad row must not take the page or its photos down.
The real sorter's event log, real SQLite, the real status server over real sockets."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.sorter import build_sorter
from ecosorter.edge.status.history import History
from ecosorter.edge.status.server import start_status_server
from tests.conftest import SAMPLES
from tests.edge.browser import request
from tests.edge.page_states import LABELS, normal


@pytest.fixture()
def served(tmp_path):
    state = tmp_path / "bin"
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0, "record.capture": "all"})
    with build_sorter(cfg, state_dir=state) as sorter:
        sorter.run(max_items=4)
    ids = [r[0] for r in sqlite3.connect(state / "events.db").execute("SELECT id FROM events ORDER BY seq")]
    server = start_status_server(normal(), "127.0.0.1", 0, token="t0ken-0123456789abcdef",
                                 history=History(state / "events.db", state / "captures", LABELS))
    yield state, ids, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("image", ["a\x00b.jpg", "x" * 5000 + ".jpg", "kaca/" + "y/" * 3000 + "z.jpg"],
                         ids=["nul", "long-name", "deep"])
def test_a_row_with_an_impossible_photo_path_does_not_take_the_history_down(served, image):
    state, ids, base = served
    with sqlite3.connect(state / "events.db") as db:
        db.execute("UPDATE events SET image = ? WHERE id = ?", (image, ids[0]))
    code, body = request(base + "/api/history")
    assert code == 200, body
    items = {i["id"]: i for i in json.loads(body)["items"]}
    assert not items[ids[0]]["photo"] and items[ids[1]]["photo"]
    assert request(base + f"/api/history/photo/{ids[0]}.jpg")[0] == 404  # an answer, not a dropped connection
    code, jpeg = request(base + f"/api/history/photo/{ids[1]}.jpg")
    assert code == 200 and jpeg[:3] == b"\xff\xd8\xff"
    assert Path(state / "events.db").is_file()
