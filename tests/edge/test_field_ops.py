"""Field operation: MQTT through broker outages and restarts, kill -9 durability, model updates."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ecosorter.edge.commands import CommandError, CommandProcessor, callbacks_for, parse_command
from ecosorter.edge.config import load_config
from ecosorter.edge.model.store import ModelInstallError, ModelStore
from ecosorter.edge.security import new_keypair, sign_command
from ecosorter.edge.sorter import build_sorter
from tests.conftest import SAMPLES

DEMO = SAMPLES.parent / "demo_int8.tflite"
pytestmark = pytest.mark.broker


def collector(port: int, topic: str):
    """A persistent-session QoS 1 subscriber: it misses nothing across broker restarts."""
    import paho.mqtt.client as mqtt

    got: list[dict] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-collector", clean_session=False)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
    c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
    c.reconnect_delay_set(1, 2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, got


def sim(state: Path, port: int, **over):
    return load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                  "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                  "mqtt.enabled": True, "mqtt.port": port, "bin_id": "bin7",
                                  "record.state_dir": str(state), **over})


def wait(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.05)
    return cond()


def test_every_event_arrives_in_order_through_outages_and_restarts(mosquitto, tmp_path):
    client, got = collector(mosquitto.port, "ecosorter/bin7/event")
    assert wait(lambda: client.is_connected())

    def sort_all(cfg):
        with build_sorter(cfg) as sorter:
            sorter.run()
            return sorter

    s1 = sort_all(sim(tmp_path, mosquitto.port))           # broker up
    time.sleep(0.5)
    mosquitto.stop()                                         # outage ...
    s2 = sort_all(sim(tmp_path, mosquitto.port))           # ... sorting goes on, and the sorter restarts
    with build_sorter(sim(tmp_path, mosquitto.port)) as s3:  # a third process life, the broker comes back
        stop = threading.Event()
        t = threading.Thread(target=lambda: s3.run(stop, max_items=None), daemon=True)
        t.start()
        time.sleep(1.0)
        mosquitto.start()
        assert wait(lambda: s3.mqtt.pending() == 0 and s3.summary.items > 0, 30)
        stop.set()
        t.join(10)
        ids = [r["id"] for r in s3.events.query("SELECT id FROM events ORDER BY seq")]
    assert s1.summary.items == s2.summary.items == 13 and len(ids) == 39
    assert wait(lambda: len({e["id"] for e in got}) >= 39, 20)
    client.loop_stop()
    seen: list[str] = []
    for e in got:  # de-duplicate by id (at-least-once), keep first arrival
        if e["id"] not in seen:
            seen.append(e["id"])
    assert seen == ids  # all of them, in the order they were recorded
    assert all(e["bin_id"] == "bin7" and e["label"] in e["probabilities"] for e in got)


def test_availability_state_and_home_assistant_discovery(mosquitto, tmp_path, one_day):
    import paho.mqtt.client as mqtt

    retained: dict[str, bytes] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, u, f, rc, p: (cl.subscribe("ecosorter/#"), cl.subscribe("homeassistant/#"))
    c.on_message = lambda cl, u, m: retained.__setitem__(m.topic, m.payload)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    with build_sorter(sim(tmp_path, mosquitto.port, **{"camera.realtime": True, "camera.fps": 60.0})) as s:
        s.run()
        assert wait(lambda: retained.get("ecosorter/bin7/availability") == b"online")
        s.machine.raise_("jam", "chute did not leave 0 deg")  # a fault and its clearing go out as events
        s.clear_fault("test")
        s._last_state_t = -1e9
        s.housekeeping()
        assert wait(lambda: "ecosorter/bin7/state" in retained)
        assert wait(lambda: json.loads(retained.get("ecosorter/bin7/machine", b"{}")).get("state") == "cleared")
    assert wait(lambda: retained.get("ecosorter/bin7/availability") == b"offline")
    state = json.loads(retained["ecosorter/bin7/state"])
    assert sum(state["today"]["counts"].values()) == 13
    # what physically went where: per compartment, with unrouted apart, adds up to the items
    assert sum(c["count"] for c in state["compartments"]) + state["unrouted"] == 13
    assert state["machine"]["state"] == "ready"
    last_machine = json.loads(retained["ecosorter/bin7/machine"])
    assert last_machine["name"] == "jam" and last_machine["who"] == "test" and last_machine["reason_en"].startswith("Jammed")
    disc = json.loads(retained["homeassistant/sensor/ecosorter_bin7/kaca/config"])
    assert disc["state_topic"] == "ecosorter/bin7/state" and "value_json.today.counts['kaca']" in disc["value_template"]
    c.loop_stop()


WRITER = r"""
import sys, time
from ecosorter.edge.record import Event, EventLog
log = EventLog(sys.argv[1])
i = 0
while True:
    ev = Event("kaca", 0.9, {"kaca": 0.9}, False, 0, 0, True, 1, "x" * 64, {"total": 1.0})
    log.append(ev)
    print(ev.id, flush=True)   # acknowledged: committed before this line
    i += 1
"""


def test_kill_9_during_writes_loses_no_acknowledged_event(tmp_path):
    db = tmp_path / "events.db"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    acked = []
    while len(acked) < 300:
        acked.append(p.stdout.readline().strip())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    acked += [line.strip() for line in p.stdout.read().splitlines() if line.strip()]
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in con.execute("SELECT id FROM events")}
    assert set(acked) <= stored


# ----------------------------------------------------------------------------- model updates

def three_class_model(tmp_path: Path) -> Path:
    """A real converted model whose labels differ from the bin's seven."""
    tf = pytest.importorskip("tensorflow")
    from ecosorter.convert.embed import embed_metadata
    from ecosorter.edge.model.manifest import Label, Manifest
    from ecosorter.edge.preprocess import InputSpec, PreprocessSpec

    m = tf.keras.Sequential([tf.keras.Input((224, 224, 3)), tf.keras.layers.AveragePooling2D(32),
                             tf.keras.layers.Flatten(), tf.keras.layers.Dense(3, activation="softmax")])
    raw = tf.lite.TFLiteConverter.from_keras_model(m).convert()
    man = Manifest((Label("a", "a"), Label("b", "b"), Label("c", "c")), InputSpec(224, 224), PreprocessSpec())
    out = tmp_path / "three.tflite"
    out.write_bytes(embed_metadata(raw, man.to_json()))
    return out


def test_bad_model_updates_are_refused_and_the_running_model_is_untouched(tmp_path):
    import hashlib

    store = ModelStore(tmp_path)
    good = store.install(DEMO, hashlib.sha256(DEMO.read_bytes()).hexdigest(), allow_unsigned=True)
    store.expected_labels = good.labels
    before = os.readlink(store.current)

    with pytest.raises(ModelInstallError, match="sha256 is .* expected 0000"):
        store.install(DEMO, "0" * 64, allow_unsigned=True)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(DEMO.read_bytes()[:50_000])
    with pytest.raises(ModelInstallError, match="truncated.tflite"):
        store.install(truncated, allow_unsigned=True)
    with pytest.raises(ModelInstallError, match=r"labels \['a', 'b', 'c'\] differ"):
        store.install(three_class_model(tmp_path), allow_unsigned=True)
    with pytest.raises(ModelInstallError, match="outside"):
        store.resolve_reference("../../../etc/passwd")
    with pytest.raises(ModelInstallError, match="only http"):
        store.fetch("file:///etc/passwd")
    assert os.readlink(store.current) == before
    for bad, why in [(b"{not json", "not JSON"), (b'{"action": "format_disk"}', "unknown"),
                     (b'{"action": "install_model", "url": "http://x/m", "sha256": "12"}', "64 hex"),
                     (b'{"action": "install_model", "sha256": "' + b"a" * 64 + b'"}', "exactly one")]:
        with pytest.raises(CommandError, match=why):
            parse_command(bad)


def test_signed_updates(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    store = ModelStore(tmp_path, public_key=pub)
    with pytest.raises(ModelInstallError, match="signature is required"):
        store.install(DEMO)
    with pytest.raises(ModelInstallError, match="does not verify"):
        store.install(DEMO, signature=Ed25519PrivateKey.generate().sign(DEMO.read_bytes()))
    assert store.install(DEMO, signature=key.sign(DEMO.read_bytes())).sha256


def test_mqtt_install_swaps_between_items_and_a_broken_current_model_rolls_back(tmp_path):
    import hashlib
    import shutil

    private, public = new_keypair()
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "model.public_keys": [public], "bin_id": "bin7"})
    store = ModelStore(tmp_path)
    store.install(DEMO, allow_unsigned=True)
    with build_sorter(cfg, state_dir=tmp_path) as sorter:
        commands = CommandProcessor(cfg, sorter.store, tmp_path, callbacks_for(sorter))

        def command(**args) -> dict:
            return commands.handle(json.dumps(sign_command(private, "install_model", args, "bin7")).encode())

        old = sorter.model
        store.incoming.mkdir(parents=True, exist_ok=True)
        # a byte-different but equivalent model: same weights, re-embedded manifest
        from ecosorter.edge.model.tflite_file import read_metadata

        assert "ecosorter.manifest" in read_metadata(DEMO.read_bytes())
        new = store.incoming / "new.tflite"
        shutil.copy(DEMO, new)
        with open(new, "ab") as f:
            f.write(b"\0" * 16)  # trailing bytes change the hash, not the flatbuffer
        sha = hashlib.sha256(new.read_bytes()).hexdigest()
        r = command(file="new.tflite", sha256=sha)
        assert r["ok"], r
        assert sorter.model is old  # installed and verified, but the loop swaps it, between items
        sorter.housekeeping()
        assert sorter.model is not old and sorter.model.sha256 == sha
        bad = command(file="../x.tflite", sha256=sha)
        assert not bad["ok"] and "install_model.file: '../x.tflite' is not a file name" in bad["error"]
        assert sorter.run().items == 13
    # the installed model is damaged on disk: the next start rolls back to the previous one
    target = store.dir / os.readlink(store.current)
    target.write_bytes(target.read_bytes()[:1000])
    with build_sorter(cfg, state_dir=tmp_path) as sorter:
        assert sorter.model.sha256 == hashlib.sha256(DEMO.read_bytes()).hexdigest()
        assert "rolled back" in sorter.board.snapshot()["health"]["model"]["detail"]


def test_captures_quota_keeps_flagged_and_export_writes_class_folders(tmp_path):
    from ecosorter.edge.cli import main

    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "record.capture": "all", "record.capture_quota_mb": 0.12})
    with build_sorter(cfg, state_dir=tmp_path) as sorter:
        first = []
        sorter.run(max_items=1, on_event=first.append)
        assert sorter.flag(first[0].id)
        sorter.run()
    photos = list((tmp_path / "captures").glob("*/*.jpg"))
    assert sum(p.stat().st_size for p in photos) <= 0.12e6
    assert any(first[0].id in p.name for p in photos)  # the oldest, but flagged: kept
    out = tmp_path / "export"
    assert main(["export", str(out), "--state-dir", str(tmp_path), "--since", "2000-01-01"]) == 0
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0].startswith("photo,id,time") and len(rows) - 1 == len(photos)
    assert all((out / r.split(",")[0]).exists() for r in rows[1:])
