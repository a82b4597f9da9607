"""Issue 21: one trust rule for every way a model arrives, and a line for everything checked.

Real ed25519 keys, real LiteRT self-tests, the real CLI, the real sorter and a real Mosquitto."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from ecosorter.edge.cli import main
from ecosorter.edge.commands import CommandError, parse_command
from ecosorter.edge.config import load_config
from ecosorter.edge.model.store import ModelInstallError, ModelStore
from ecosorter.edge.security import new_keypair, sign_file
from ecosorter.edge.sorter import build_sorter
from tests.conftest import DATA, SAMPLES
from tests.security.conftest import (
    BIN,
    DEMO,
    Attacker,
    RunningSorter,
    retained_on,
    sha,
    signed,
    sorter_cfg,
    versioned_model,
    wait,
)

CHECKS = ("signature: ", "sha256: ", "manifest: ", "version: ", "verification: ", "self-test: ")


@pytest.fixture(autouse=True)
def no_system_config(tmp_path, monkeypatch):
    """Whatever this machine has in /etc/ecosorter, "no config" here means none."""
    monkeypatch.setattr("ecosorter.edge.config.DEFAULT_PATH", tmp_path / "etc-ecosorter-config.toml")


def write_config(tmp_path, *lines: str, name: str = "config.toml"):
    path = tmp_path / name
    path.write_text("\n".join(["[record]", f'state_dir = "{tmp_path / "state"}"', "[model]", *lines]) + "\n")
    return path


def unverified_model(folder, name: str = "forced.tflite"):
    """The demo model as a --force'd conversion writes it: verified false, with the failed rule."""
    from ecosorter.convert.embed import embed_metadata
    from ecosorter.edge.model.loader import read_manifest

    content = DEMO.read_bytes()
    m = read_manifest(content)
    v = {**m.verification, "agreement": 0.905, "keras_accuracy": 0.095, "verified": False,
         "failed": ["agreement 90.5% < 98.0%"]}
    out = folder / name
    out.write_bytes(embed_metadata(content, dataclasses.replace(m, verification=v, version=7).to_json()))
    return out


def metrics(board) -> dict[str, float]:
    """The model gauges as Prometheus reads them from the real status server."""
    from prometheus_client.parser import text_string_to_metric_families

    from ecosorter.edge.status.server import start_status_server
    from tests.edge.browser import request

    server = start_status_server(board, "127.0.0.1", 0)
    try:
        code, body = request(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
    assert code == 200
    return {f.name: f.samples[0].value for f in text_string_to_metric_families(body.decode())
            if f.name.startswith("ecosorter_model_")}


def install(*args) -> int:
    return main(["model", "install", *map(str, args)])


def check_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.startswith("  ")]


def test_random_and_wrong_key_signatures_are_refused_with_and_without_a_config(tmp_path, capsys, keys):
    state = tmp_path / "state"
    rand = tmp_path / "random.sig"
    rand.write_bytes(bytes(range(64)))
    wrong = tmp_path / "wrong.sig"
    wrong.write_bytes(sign_file(new_keypair()[0], DEMO.read_bytes()))

    # No config file (and none at /etc/ecosorter): no key, so a signature cannot be checked: refused
    for sig in (rand, wrong):
        assert install(DEMO, "--signature", sig, "--state-dir", state) == 2
        err = capsys.readouterr().err
        assert "a signature was given but no key is configured" in err and "no config file" in err
        assert "give --config" in err and "refused" in err
    assert install(DEMO, "--state-dir", state) == 2
    assert "not signed, and no key is configured" in capsys.readouterr().err
    assert not (state / "models" / "current.tflite").exists()
    # a --config that is not there is said, not replaced by the defaults
    assert install(DEMO, "--config", tmp_path / "nope.toml", "--state-dir", state) == 2
    assert "--config " + str(tmp_path / "nope.toml") + ": file not found" in capsys.readouterr().err

    # A config with the key: random bytes and another key's signature do not verify; none is required
    config = write_config(tmp_path, f'public_key = "{keys[1]}"')
    for sig in (rand, wrong):
        assert install(DEMO, "--config", config, "--signature", sig) == 2
        assert "ed25519 signature does not verify with any configured key" in capsys.readouterr().err
    assert install(DEMO, "--config", config) == 2
    assert "a signature is required" in capsys.readouterr().err
    assert not (state / "models" / "current.tflite").exists()

    good = tmp_path / "good.sig"
    good.write_bytes(sign_file(keys[0], DEMO.read_bytes()))
    assert install(DEMO, "--config", config, "--signature", good) == 0
    lines = check_lines(capsys.readouterr().out)
    assert [line.split(" ")[0] + " " for line in lines] == list(CHECKS)
    kid = ModelStore.from_config(load_config(config)).keys[0].id
    assert lines[0] == f"signature: ok, ed25519 key {kid} (model.public_key)"
    assert lines[1] == f"sha256: {sha(DEMO)}"
    assert lines[2].startswith("manifest: ok, 7 labels kaca,kardus,kertas,khusus,logam,organik,plastik")
    assert lines[3] == "version: 0 (no model installed before)"
    assert lines[4].startswith("verification: passed at conversion: 349 images, agreement 97.4% (min 97.0%)")
    assert re.fullmatch(r"self-test: ok, 01-kaca-trashnet-glass1\.jpg -> \w+ [01]\.\d\d \(probabilities sum to 1\)",
                        lines[5])


def test_public_keys_alone_enforce_signatures_locally_and_list_says_who_signed(tmp_path, capsys, keys):
    config = write_config(tmp_path, f'public_keys = ["{new_keypair()[1]}", "{keys[1]}"]')
    assert install(DEMO, "--config", config) == 2
    assert "a signature is required" in capsys.readouterr().err
    sig = tmp_path / "demo.sig"
    sig.write_bytes(sign_file(keys[0], DEMO.read_bytes()))
    v1 = versioned_model(tmp_path, 20261204150000)
    (tmp_path / "v1.sig").write_bytes(sign_file(keys[0], v1.read_bytes()))
    assert install(DEMO, "--config", config, "--signature", sig) == 0
    assert install(v1, "--config", config, "--signature", tmp_path / "v1.sig", "--sha256", sha(v1)) == 0
    out = capsys.readouterr().out
    kid = ModelStore.from_config(load_config(config)).keys[1].id
    assert f"signature: ok, ed25519 key {kid} (model.public_keys[1])" in out
    assert "version: 20261204150000 > running 0: upgrade" in out
    assert f"sha256: {sha(v1)} (matches the expected sha256)" in out

    assert main(["model", "list", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    current, previous = listed.split("previous (rollback target): ")
    assert current.startswith(f"current (running): sha-{sha(v1)[:12]}")
    for want in ("version       20261204150000", "source        demo.h5 (int8)",
                 "labels        kaca,kardus,kertas,khusus,logam,organik,plastik",
                 "verification  passed at conversion: 349 images", f"signed by     key {kid} (model.public_keys[1])",
                 "from v20261204150000.tflite"):
        assert want in current, (want, current)
    assert previous.startswith(f"sha-{sha(DEMO)[:12]}") and "version       0" in previous

    assert main(["model", "rollback", "--config", str(config)]) == 0
    assert f"rolled back to sha-{sha(DEMO)}.tflite" in capsys.readouterr().out


def test_unsigned_needs_the_flag_and_stays_visible_until_a_signed_model_replaces_it(tmp_path, capsys, keys):
    state = tmp_path / "state"
    assert install(DEMO, "--state-dir", state) == 2
    assert "--allow-unsigned" in capsys.readouterr().err
    assert install(DEMO, "--state-dir", state, "--allow-unsigned", "--signature", tmp_path / "x.sig") == 2
    assert "not both" in capsys.readouterr().err
    assert install(DEMO, "--state-dir", state, "--allow-unsigned") == 0
    out = capsys.readouterr().out
    assert check_lines(out)[0].startswith("signature: NONE: installed unsigned (--allow-unsigned)")
    assert main(["model", "list", "--state-dir", str(state)]) == 0
    assert "signed by     UNSIGNED (installed with --allow-unsigned)" in capsys.readouterr().out

    # never over MQTT: a remote install has no such switch (the schema refuses the key)
    with pytest.raises(CommandError, match="unknown key 'allow_unsigned'"):
        parse_command(json.dumps({"action": "install_model", "file": "m.tflite", "sha256": "a" * 64,
                                  "allow_unsigned": True}).encode())

    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "model.public_key": keys[1]})
    with build_sorter(cfg, state_dir=state) as sorter:
        m = sorter.board.snapshot()["model"]
        assert m["unsigned"] and not m["signed"] and m["trust"] == "UNSIGNED: installed with --allow-unsigned"
        assert m["sha256"] == sha(DEMO)
        assert metrics(sorter.board) == {"ecosorter_model_unsigned": 1.0, "ecosorter_model_unverified": 0.0}

    # a signed model replaces it: no longer shown as unsigned
    v1 = versioned_model(tmp_path, 1)
    (tmp_path / "v1.sig").write_bytes(sign_file(keys[0], v1.read_bytes()))
    config = write_config(tmp_path, f'public_key = "{keys[1]}"')
    assert install(v1, "--config", config, "--signature", tmp_path / "v1.sig") == 0
    with build_sorter(cfg, state_dir=state) as sorter:
        m = sorter.board.snapshot()["model"]
        assert not m["unsigned"] and m["signed"] and m["trust"].startswith("signed by key ")
    # a model named by model.path was never checked: shown as unsigned too; the bundled demo is not
    with build_sorter(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(v1))),
                      state_dir=tmp_path / "other") as sorter:
        assert sorter.board.snapshot()["model"]["unsigned"]
    with build_sorter(cfg, state_dir=tmp_path / "fresh") as sorter:
        assert not sorter.board.snapshot()["model"]["unsigned"]


def test_two_default_conversions_in_a_row_install_in_order(tiny_h5, tmp_path, capsys):
    from ecosorter.convert.cli import main as convert_main
    from ecosorter.edge.model.loader import read_manifest

    state = tmp_path / "state"
    common = [str(tiny_h5), "--quantize", "float32", "--validation", str(DATA), "--quiet"]
    # an earlier explicit version (the old default trap started from any versioned install)
    assert convert_main([*common, "-o", str(tmp_path / "v4.tflite"), "--model-version", "4"]) == 0
    assert install(tmp_path / "v4.tflite", "--state-dir", state, "--allow-unsigned") == 0
    firsts = []
    for name in ("a.tflite", "b.tflite"):
        assert convert_main([*common, "-o", str(tmp_path / name)]) == 0
        firsts.append(read_manifest((tmp_path / name).read_bytes()))
    a, b = firsts
    assert re.fullmatch(r"20\d{12}", str(a.version)) and b.version >= a.version > 4
    assert a.source["converted_at"].startswith(str(a.version)[:4] + "-")
    capsys.readouterr()
    assert install(tmp_path / "a.tflite", "--state-dir", state, "--allow-unsigned") == 0
    assert f"version: {a.version} > running 4: upgrade" in capsys.readouterr().out
    assert install(tmp_path / "b.tflite", "--state-dir", state, "--allow-unsigned") == 0
    assert f"version: {b.version} " in capsys.readouterr().out
    assert main(["model", "list", "--state-dir", str(state)]) == 0
    assert f"converted     {b.source['converted_at']}" in capsys.readouterr().out
    # an explicit --model-version below the default is the one way to walk into it, and it is said
    assert install(tmp_path / "v4.tflite", "--state-dir", state, "--allow-unsigned") == 2
    err = capsys.readouterr().err
    assert f"version 4 is older than the running version {b.version}: downgrade refused" in err
    assert "versions default to the conversion's UTC time" in err


def test_unverified_models_are_refused_by_default_everywhere(tmp_path, capsys, keys):
    state = tmp_path / "state"
    forced = unverified_model(tmp_path)
    (tmp_path / "f.sig").write_bytes(sign_file(keys[0], forced.read_bytes()))
    strict = write_config(tmp_path, f'public_key = "{keys[1]}"')
    assert install(forced, "--config", strict, "--signature", tmp_path / "f.sig") == 2
    captured = capsys.readouterr()
    assert "verification FAILED at conversion (verified: false) (agreement 90.5% < 98.0%)" in captured.err
    assert "model.allow_unverified = true" in captured.err
    # what was checked up to the refusal is still said
    assert [line.split(" ")[0] for line in check_lines(captured.out)] == ["signature:", "sha256:", "manifest:",
                                                                           "version:", "REFUSED:"]
    assert not (state / "models" / "current.tflite").exists()

    lenient = write_config(tmp_path, f'public_key = "{keys[1]}"', "allow_unverified = true", name="lenient.toml")
    assert install(forced, "--config", lenient, "--signature", tmp_path / "f.sig") == 0
    assert "ALLOWED by model.allow_unverified = true" in capsys.readouterr().out

    # `run` refuses to start on it unless the config allows it, and then the page says so
    base = {"camera.source": "folder", "camera.device": str(SAMPLES), "hardware.pin_factory": "mock",
            "hardware.led_on_s": 0.0}
    with pytest.raises(ModelInstallError, match="verified: false.*model.allow_unverified = true"):
        build_sorter(load_config(overrides=base), state_dir=state)
    with pytest.raises(ModelInstallError, match="FAILED at conversion"):
        build_sorter(load_config(overrides={**base, "model.path": str(forced)}), state_dir=tmp_path / "s2")
    with build_sorter(load_config(overrides={**base, "model.allow_unverified": True}), state_dir=state) as sorter:
        m = sorter.board.snapshot()["model"]
        assert m["unverified_allowed"] and m["verified"] is False and "ALLOWED" in m["verification"]
        assert m["unsigned"] is False  # it was signed: only the gate is the problem
        assert metrics(sorter.board) == {"ecosorter_model_unverified": 1.0, "ecosorter_model_unsigned": 0.0}

    # a live swap to it is refused (the running model stays), and so is a rollback to it
    with build_sorter(load_config(overrides=base), state_dir=tmp_path / "s3") as sorter:
        demo = sorter.model.sha256
        sorter.request_swap(forced)
        sorter.housekeeping()
        assert sorter.model.sha256 == demo and "update refused" in sorter.board.snapshot()["health"]["model"]["detail"]
    store = ModelStore(tmp_path / "s4", allow_unverified=True)
    store.install(forced, allow_unsigned=True)
    store.install(versioned_model(tmp_path, 8), allow_unsigned=True)
    store.allow_unverified = False
    with pytest.raises(ModelInstallError, match="verified: false"):
        store.rollback()


def test_mqtt_install_replies_with_the_same_lines_and_state_says_who_signed(mosquitto, tmp_path, monkeypatch, keys):
    private, public = keys
    state = tmp_path / "state"
    store = ModelStore(state)
    store.incoming.mkdir(parents=True)
    store.install(versioned_model(store.incoming, 2), allow_unsigned=True)  # running unsigned: visible
    v3 = versioned_model(store.incoming, 3)
    forced = unverified_model(store.incoming)
    cfg = sorter_cfg(state, mosquitto.port, **{"model.public_keys": [public]})
    attacker = Attacker(mosquitto.port)
    with RunningSorter(cfg, monkeypatch, tmp_path) as bin7:
        def state_model() -> dict:
            raw = retained_on(mosquitto.port, f"ecosorter/{BIN}/state")
            return json.loads(raw).get("model", {}) if raw else {}

        assert wait(lambda: state_model().get("unsigned") is True)
        attacker.send(signed(private, "install_model", file=v3.name, sha256=sha(v3)))
        r = attacker.result(1)
        assert r["ok"], r
        kid = bin7.sorter.store.keys[0].id
        assert [line.split(" ")[0] + " " for line in r["checks"]] == list(CHECKS)
        assert r["checks"][0] == f"signature: ok, its sha256 came in a command signed by key {kid} " \
                                 "(model.public_keys[0])"
        assert r["checks"][1] == f"sha256: {sha(v3)} (matches the expected sha256)"
        assert r["checks"][3] == "version: 3 > running 2: upgrade"
        assert wait(lambda: bin7.sorter.model.sha256 == sha(v3))
        assert wait(lambda: state_model().get("signed") is True and state_model().get("key_id") == kid)
        assert state_model()["unsigned"] is False and state_model()["version"] == 3

        attacker.send(signed(private, "install_model", file=forced.name, sha256=sha(forced)))
        r = attacker.result(2)
        assert not r["ok"] and "verified: false" in r["error"]
        assert [line.split(":")[0] for line in r["checks"]] == ["signature", "sha256", "manifest", "version"]
        assert bin7.sorter.model.sha256 == sha(v3)
    attacker.close()


@pytest.mark.browser
def test_the_page_shows_an_unsigned_and_an_unverified_model(tmp_path):
    """The kiosk in real headless Chromium: chips for what the running model is; none for a signed one."""
    from ecosorter.edge.status.server import start_status_server
    from tests.edge.browser import dump_dom
    from tests.edge.page_states import base

    board = base()
    board.set_model({"sha256": "ab" * 32, "version": 7, "unsigned": True, "signed": False,
                     "trust": "UNSIGNED: installed with --allow-unsigned", "verified": False,
                     "unverified_allowed": True, "verification": "FAILED at conversion (verified: false): 36 images"})
    server = start_status_server(board, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        shown = dump_dom(url, tmp_path / "a")
        board.set_model({"sha256": "cd" * 32, "version": 8, "unsigned": False, "signed": True, "verified": True,
                         "unverified_allowed": False, "trust": "signed by key 0123", "verification": "passed"})
        signed_dom = dump_dom(url, tmp_path / "b")
    finally:
        server.shutdown()
    assert "TIDAK DITANDATANGANI / UNSIGNED — UNSIGNED: installed with --allow-unsigned" in shown
    assert "TIDAK TERVERIFIKASI / UNVERIFIED — FAILED at conversion (verified: false): 36 images" in shown
    assert "UNSIGNED" not in signed_dom and "UNVERIFIED" not in signed_dom
