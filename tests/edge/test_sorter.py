"""The real loop on real photos with the bundled int8 model, simulated pins, real SQLite."""

from __future__ import annotations

import shutil
import sqlite3
import time

import numpy as np
import pytest

from ecosorter.edge import classify_image, load_model
from ecosorter.edge.config import load_config
from ecosorter.edge.decide.presence import TriggerState, VisionTrigger
from ecosorter.edge.sorter import build_sorter
from ecosorter.edge.sources.folder import EMPTY_TRAY_RGB
from tests.conftest import DATA, SAMPLES, duty


@pytest.fixture()
def camera_dir(tmp_path):
    d = tmp_path / "camera"
    d.mkdir()
    for p in sorted(DATA.glob("*/*.jpg"))[::3]:
        shutil.copy(p, d / p.name)
    return d


def sim(camera, **over):
    return load_config(overrides={"camera.source": "folder", "camera.device": str(camera),
                                  "hardware.pin_factory": "mock", "hardware.settle_s": 0.0,
                                  "hardware.drop_s": 0.0, **over})


def test_each_photo_is_one_decision_equal_to_classify_and_the_chute_follows(camera_dir, factory, tmp_path):
    cfg = sim(camera_dir, **{"hardware.profile": "chute"})
    model = load_model()
    expected = {p.name: classify_image(model, p).label for p in sorted(camera_dir.iterdir())}
    chute_angles = cfg.hardware.chute_angles
    moves = []
    with build_sorter(cfg, pin_factory=factory, state_dir=tmp_path / "state") as sorter:
        chute = factory.pin(cfg.hardware.chute_pin)

        def on_event(ev):
            # the last non-home pulse the chute got is this item's compartment angle
            duties = [round(s.state, 4) for s in chute.states if s.state]
            moves.append(duties[-2])

        s = sorter.run(on_event=on_event)
        assert s.items == len(expected)
        rows = sqlite3.connect(tmp_path / "state" / "events.db").execute(
            "SELECT source_name, label, uncertain, compartment, routed_to FROM events ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == list(expected)
    for (name, label, uncertain, compartment, routed), moved_to in zip(rows, moves, strict=True):
        assert label == expected[name]
        want = cfg.hardware.compartments["khusus" if uncertain else label]
        assert compartment == routed == want
        assert moved_to == round(duty(chute_angles[want]), 4)


def test_confident_items_cost_one_inference_others_are_averaged(camera_dir, tmp_path):
    with build_sorter(sim(camera_dir), state_dir=tmp_path / "a") as sorter:
        s = sorter.run()
        one = [e for e in sorter.events.query("SELECT frames FROM events") if e["frames"] == 1]
    assert s.inferences < s.frames / 3  # the empty tray and moving frames cost no inference
    never_early = sim(camera_dir, **{"decision.early_confidence": 1.0, "decision.frames": 3})
    with build_sorter(never_early, state_dir=tmp_path / "b") as sorter:
        s2 = sorter.run()
        frames = [r["frames"] for r in sorter.events.query("SELECT frames FROM events")]
    assert s2.items == s.items and set(frames) == {3}
    assert s2.inferences == 3 * s2.items > s.inferences
    assert len(one) > 0


def test_uncertain_items_go_to_the_fallback_compartment(camera_dir, tmp_path):
    cfg = sim(camera_dir, **{"decision.threshold": 0.999, "decision.fallback": "khusus",
                             "hardware.compartments": {"kaca": 0, "kardus": 1, "kertas": 1, "khusus": 2,
                                                       "logam": 0, "organik": 1, "plastik": 0},
                             "hardware.led_pins": [5, 6, 13]})
    with build_sorter(cfg, state_dir=tmp_path) as sorter:
        sorter.run()
        rows = sorter.events.query("SELECT uncertain, confidence, routed_to FROM events")
    unsure = [r for r in rows if r["uncertain"]]
    assert unsure and all(r["routed_to"] == 2 and r["confidence"] < 0.999 for r in unsure)


def test_empty_tray_yields_no_decision_and_no_inference(tmp_path):
    cfg = sim(SAMPLES)
    empty = np.empty((384, 512, 3), np.uint8)
    empty[:] = EMPTY_TRAY_RGB
    noise = np.random.default_rng(0)
    with build_sorter(cfg, state_dir=tmp_path) as sorter:
        from ecosorter.edge.sources.base import Frame

        for i in range(50):
            jitter = noise.integers(-2, 3, empty.shape).astype(np.int16)
            px = np.clip(empty + jitter, 0, 255).astype(np.uint8)
            assert sorter.process(Frame(px, "rgb", float(i), i)) is None
        assert sorter.summary.inferences == 0 and sorter.events.count() == 0


def test_vision_trigger_waits_until_still():
    cfg = load_config().trigger
    trig = VisionTrigger(cfg)
    empty = np.full((48, 64, 3), 200, np.uint8)
    item = empty.copy()
    item[10:40, 10:50] = 40
    moved = np.roll(item, 7, axis=1)
    states = [trig.update(f) for f in [empty] * 3 + [item, moved, item, item, item, empty]]
    assert states[2] is TriggerState.EMPTY
    assert states[3:6] == [TriggerState.MOVING] * 3  # still moving: no classification yet
    assert states[6] is TriggerState.MOVING and states[7] is TriggerState.SETTLED
    assert states[8] is TriggerState.EMPTY


def test_run_keeps_going_past_a_bad_photo(camera_dir, tmp_path, caplog):
    (camera_dir / "000-broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with build_sorter(sim(camera_dir), state_dir=tmp_path) as sorter:
        s = sorter.run()
    assert s.items == len(list(camera_dir.glob("*.jpg"))) - 1
    assert "000-broken.jpg: not an image" in caplog.text


def test_labels_must_all_have_a_compartment(tmp_path):
    from ecosorter.edge.errors import ConfigError

    cfg = sim(SAMPLES, **{"hardware.compartments": {"kaca": 0}, "hardware.profile": "none"})
    with pytest.raises(ConfigError, match="hardware.compartments: no compartment for kardus"):
        build_sorter(cfg, state_dir=tmp_path)


def test_break_beam_trigger_wrong_button_and_power_fail(factory, tmp_path):
    from ecosorter.edge.sources.base import Frame
    from ecosorter.edge.sources.folder import FolderSource

    cfg = sim(SAMPLES, **{"trigger.mode": "sensor", "hardware.item_sensor_pin": 17,
                          "hardware.wrong_button_pin": 27, "hardware.power_fail_pin": 22})
    with build_sorter(cfg, pin_factory=factory, state_dir=tmp_path) as sorter:
        beam, wrong, power = factory.pin(17), factory.pin(27), factory.pin(22)
        src = FolderSource(SAMPLES, item_frames=4, empty_frames=0)
        src.open()
        frames = [src.read() for _ in range(8)]
        # the beam is not broken: an item in view is ignored
        assert all(sorter.process(f) is None for f in frames[:4]) and sorter.summary.inferences == 0
        beam.drive_low()  # beam broken: an item is on the tray
        events = [e for f in frames[:4] for e in [sorter.process(Frame(f.pixels, f.order, 0.0, f.seq, f.name))] if e]
        assert len(events) == 1 and events[0].source_name == frames[0].name
        wrong.drive_low()  # a person presses "wrong?" and lets go
        wrong.drive_high()
        sorter.tick()
        assert sorter.events.query("SELECT flagged FROM events WHERE id = ?", (events[0].id,))[0]["flagged"] == 1
        beam.drive_high()  # the item is taken away
        sorter.process(frames[3])
        power.drive_low()  # the UPS says power is failing: a hold, nothing moves
        sorter.tick()
        assert sorter.machine.active("power") and not sorter.machine.may_move()
        beam.drive_low()  # the next item arrives
        held = [sorter.process(f) for f in frames[4:]]
        assert held == [None] * 4 and sorter.pending is not None and sorter.pending.held_by == "power"
        power.drive_high()  # power is back: the item that waited is routed, once
        routed = []
        sorter._on_event = routed.append
        sorter.tick()
        assert len(routed) == 1 and routed[0].routed_ok and "waited for power" in routed[0].note
        assert sorter.summary.items == 2 and sorter.summary.held == 1


def test_dark_and_blurred_camera_alerts(tmp_path):
    import cv2

    from ecosorter.edge.sources.base import Frame
    from ecosorter.edge.sources.folder import FolderSource

    with build_sorter(sim(SAMPLES), state_dir=tmp_path) as sorter:
        src = FolderSource(SAMPLES, item_frames=6, empty_frames=3)
        src.open()
        frames = [src.read() for _ in range(3 + 9 * 4)]

        def feed(transform):
            for i, f in enumerate(frames):
                sorter.process(Frame(transform(f.pixels), f.order, float(i), f.seq, f.name))
            return sorter.board.snapshot()["health"].get("image", {"ok": True, "detail": ""})

        assert feed(lambda p: p)["ok"] is True
        dark = feed(lambda p: (p // 12).astype(np.uint8))
        assert dark["ok"] is False and "too dark" in dark["detail"]
        assert feed(lambda p: p)["ok"] is True  # lights back on: the alert clears
        blurred = feed(lambda p: cv2.GaussianBlur(p, (0, 0), 12))
        assert blurred["ok"] is False and "blurred" in blurred["detail"]


def test_pir_sensor_trigger(factory, tmp_path):
    from ecosorter.edge.sources.folder import FolderSource

    cfg = sim(SAMPLES, **{"trigger.mode": "sensor", "hardware.item_sensor_pin": 4, "hardware.item_sensor_kind": "pir"})
    with build_sorter(cfg, pin_factory=factory, state_dir=tmp_path) as sorter:
        src = FolderSource(SAMPLES, item_frames=4, empty_frames=0)
        src.open()
        frames = [src.read() for _ in range(4)]
        assert all(sorter.process(f) is None for f in frames)
        factory.pin(4).drive_high()  # PIR: high on motion
        deadline = time.monotonic() + 30  # gpiozero samples motion sensors at 10 Hz, on its own thread
        while not sorter.inputs.item_present() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e for f in frames if (e := sorter.process(f))]
