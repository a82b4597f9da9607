"""Issue 18 item 14 (model and commands): the installed file is checked against the hash in its name
at load, display names follow a live swap, and a signed `flag` of an unknown id is an error.
Real models in LiteRT, the real store, the real sorter and command worker, real SQLite."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ecosorter.edge.commands import Callbacks, CommandProcessor, callbacks_for
from ecosorter.edge.config import load_config
from ecosorter.edge.errors import ModelError
from ecosorter.edge.model.loader import load_model, read_manifest
from ecosorter.edge.model.store import ModelStore
from ecosorter.edge.sorter import build_sorter
from tests.conftest import SAMPLES
from tests.security.conftest import DEMO, sha, signed, versioned_model


def cfg_for(state: Path, **over):
    return load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                  "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                  "record.state_dir": str(state), **over})


def test_an_installed_model_changed_on_disk_is_refused_at_load_and_the_bin_rolls_back(tmp_path):
    state = tmp_path / "state"
    store = ModelStore(state)
    store.install(DEMO, allow_unsigned=True)
    v3 = versioned_model(tmp_path, 3)
    store.install(v3, allow_unsigned=True)
    installed = store.current.resolve()
    assert installed.name == f"sha-{sha(v3)}.tflite"
    installed.write_bytes(versioned_model(tmp_path, 4).read_bytes())  # a valid model, but not the one verified
    with pytest.raises(ModelError, match="hashes to .* not the .* in its name"):
        load_model(store.current)
    with build_sorter(cfg_for(state)) as sorter:  # at start: back to the previous, verified model
        assert sorter.model.sha256 == sha(DEMO)
        assert "rolled back" in sorter.board.snapshot()["health"]["model"]["detail"]
    load_model(DEMO).close()  # a file not named by its hash is not affected


def test_display_names_follow_the_new_model_after_a_live_swap(tmp_path):
    from ecosorter.convert.embed import embed_metadata

    content = DEMO.read_bytes()
    m = read_manifest(content)
    renamed = dataclasses.replace(m, labels=tuple(dataclasses.replace(lb, name=f"{lb.name} v2") for lb in m.labels))
    new = tmp_path / "renamed.tflite"
    new.write_bytes(embed_metadata(content, renamed.to_json()))
    with build_sorter(cfg_for(tmp_path / "state")) as sorter:
        assert sorter.board.snapshot()["labels"] == {lb.id: lb.name for lb in m.labels}
        sorter.request_swap(new)
        sorter.housekeeping()  # between items: the swap happens here
        assert sorter.model.sha256 == sha(new)
        assert sorter.board.snapshot()["labels"] == {lb.id: f"{lb.name} v2" for lb in m.labels}
        events = []
        sorter.run(max_items=1, on_event=events.append)
        assert sorter.board.snapshot()["last"]["name"].endswith(" v2")


def test_a_signed_flag_of_an_unknown_id_answers_an_error(tmp_path, keys):
    private, public = keys
    state = tmp_path / "state"
    cfg = cfg_for(state, **{"model.public_keys": [public], "bin_id": "bin7"})
    with build_sorter(cfg) as sorter:
        sorter.run(max_items=1)
        worker = CommandProcessor(cfg, sorter.store, state, callbacks_for(sorter))
        r = worker.handle(json.dumps(signed(private, "flag", id="0" * 32)).encode())
        assert r["ok"] is False and "no event '" + "0" * 32 + "'" in r["error"]
        r = worker.handle(json.dumps(signed(private, "flag", id=sorter.last_event_id)).encode())
        assert r["ok"] is True and r["flagged"] is True


def test_an_mqtt_install_on_a_bin_with_model_path_says_it_lasts_until_restart(tmp_path, keys):
    """`run` loads model.path at start when it is set: a model installed over MQTT ran until the next
    restart and was then silently replaced by that file again. The reply says so."""
    private, public = keys
    state = tmp_path / "state"
    v5 = versioned_model(tmp_path, 5)
    for path, said in ((str(DEMO), True), ("", False)):
        cfg = cfg_for(state, **{"model.public_keys": [public], "bin_id": "bin7", "model.path": path})
        store = ModelStore.from_config(cfg, state)
        store.incoming.mkdir(parents=True, exist_ok=True)
        (store.incoming / "v5.tflite").write_bytes(v5.read_bytes())
        worker = CommandProcessor(cfg, store, state, Callbacks(request_swap=lambda p: None))
        r = worker.handle(json.dumps(signed(private, "install_model", file="v5.tflite", sha256=sha(v5))).encode())
        assert r["ok"] is True, r
        assert ("model.path is set" in r.get("note", "")) is said, r
        if said:
            assert str(DEMO) in r["note"] and "until its next restart" in r["note"]
