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


def test_the_model_panel_shows_the_bins_own_trust_not_what_the_manifest_claims(tmp_path):
    """A model installed UNSIGNED whose manifest says `signed: "key 3f9a..."` and `verified: true` in its
    source block: the history page must show what the bin judged (the install record, the gate), like
    the kiosk's "Model: UNSIGNED", not the file's own claims."""
    import dataclasses

    from ecosorter.convert.embed import embed_metadata
    from ecosorter.edge.cli import history_for
    from ecosorter.edge.model.loader import read_manifest
    from ecosorter.edge.model.store import ModelStore
    from tests.security.conftest import DEMO

    content = DEMO.read_bytes()
    m = read_manifest(content)
    claims = {"signed": "key 3f9a1c2b7d0e4a51 (model.public_keys[0])", "signer": "the owner", "key_id": "3f9a1c2b"}
    forged = dataclasses.replace(m, version=2, source={**m.source, **claims})
    model = tmp_path / "claims.tflite"
    model.write_bytes(embed_metadata(content, forged.to_json()))
    state = tmp_path / "state"
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "record.state_dir": str(state)})
    ModelStore.from_config(cfg).install(model, allow_unsigned=True)
    with build_sorter(cfg) as sorter:
        sorter.run(max_items=1)
        assert sorter.board.snapshot()["model"]["unsigned"] is True  # the kiosk says UNSIGNED
        server = start_status_server(sorter.board, "127.0.0.1", 0, history=history_for(sorter, cfg))
        try:
            code, body = request(f"http://127.0.0.1:{server.server_port}/api/model")
        finally:
            server.shutdown()
    assert code == 200
    trust = json.loads(body)["trust"]
    assert trust.get("signed") is False and trust.get("verified") is True, trust
    assert "3f9a1c2b" not in json.dumps(trust)


@pytest.mark.parametrize(("column", "value"), [("routed_to", "x"), ("compartment", "x"), ("flagged", "yes"),
                                                ("model_sha256", 5), ("label", 7), ("image", 3)])
def test_a_row_with_a_value_of_the_wrong_type_does_not_take_the_history_down(served, column, value):
    """SQLite keeps any type in any column: an edited or recovered log may hold text where a number was."""
    state, ids, base = served
    with sqlite3.connect(state / "events.db") as db:
        db.execute(f"UPDATE events SET {column} = ? WHERE id = ?", (value, ids[0]))  # noqa: S608 - test's own names
    code, body = request(base + "/api/history")
    assert code == 200, body
    got = [i["id"] for i in json.loads(body)["items"]]
    assert set(ids[1:]) <= set(got)
    assert request(base + f"/api/history/photo/{ids[0]}.jpg")[0] in (200, 404)  # an answer, not a dropped connection
