"""Camera unplugged, frozen and slow, through the real loop: detected, reported, reopened, resumed."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.errors import SourceError
from ecosorter.edge.preprocess import decode_image
from ecosorter.edge.sorter import build_sorter
from ecosorter.edge.sources.base import Frame
from ecosorter.edge.sources.folder import EMPTY_TRAY_RGB
from tests.conftest import SAMPLES


class FaultyCamera:
    """Real photos as a live camera, with faults switched on from the test: the device layer
    is the one part of the bin that cannot be real here."""

    live = True
    name = "faulty-camera"

    def __init__(self, fps: float = 30.0):
        photos = [decode_image(p)[..., ::-1].copy() for p in sorted(SAMPLES.glob("*.jpg"))[:6]]
        empty = np.empty_like(photos[0])
        empty[:] = EMPTY_TRAY_RGB[::-1]
        self.script = [empty] * 4 + [f for p in photos for f in [p] * 6 + [empty] * 4]
        self.mode = "ok"
        self.period = 1 / fps
        self.opens = 0
        self.i = 0
        self.rng = np.random.default_rng(0)
        self.is_open = False

    def open(self) -> None:
        if self.mode == "unplugged":
            raise SourceError("camera.device: cannot open (unplugged)")
        self.opens += 1
        self.is_open = True

    def read(self) -> Frame:
        if not self.is_open:
            raise SourceError("not open")
        if self.mode == "unplugged":
            self.is_open = False
            raise SourceError("camera.device: no frame (unplugged?)")
        time.sleep(1.0 if self.mode == "slow" else self.period)
        if self.mode == "frozen":
            px = self.script[0]
        else:
            px = self.script[self.i % len(self.script)]
            self.i += 1
            px = np.clip(px.astype(np.int16) + self.rng.integers(-1, 2, px.shape), 0, 255).astype(np.uint8)  # sensor noise
        return Frame(px, "bgr", time.monotonic(), self.i)

    def close(self) -> None:
        self.is_open = False


@pytest.fixture(params=[0.6])
def camera_run(tmp_path, monkeypatch, request):
    cam = FaultyCamera()
    monkeypatch.setattr("ecosorter.edge.sorter.open_source", lambda cfg, on_bad_image=None: cam)
    cfg = load_config(overrides={"hardware.pin_factory": "mock", "hardware.led_on_s": 0.0, "camera.fps": 30.0,
                                 "camera.stall_timeout_s": request.param, "camera.reopen_backoff_max_s": 0.4})
    sorter = build_sorter(cfg, state_dir=tmp_path)
    stop = threading.Event()
    t = threading.Thread(target=sorter.run, args=(stop,), daemon=True)
    t.start()
    yield cam, sorter
    stop.set()
    t.join(60)  # returns when the loop ends; the limit is for a hung loop only
    sorter.close()


def camera_health(sorter):
    return sorter.board.snapshot()["health"].get("camera", {"ok": None, "detail": ""})


def until(cond, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("fault,detail", [("unplugged", "failed"), ("frozen", "frozen")])
def test_fault_detected_reported_and_recovered(camera_run, fault, detail):
    cam, sorter = camera_run
    assert until(lambda: sorter.summary.items >= 1, 60)
    cam.mode = fault
    t0 = time.monotonic()
    assert until(lambda: camera_health(sorter)["ok"] is False, 30)
    detected = time.monotonic() - t0
    assert detail in camera_health(sorter)["detail"]
    # the configured 0.6 s acted, not the default 3 s: the loop sees it at its next 0.5 s poll (~1.1 s);
    # the rest of the bound is slack for a loaded CI machine (1.0 s seen at load 8 on 2 cores), not a figure
    assert detected < 3.0, detected
    items = sorter.summary.items
    opens = cam.opens
    cam.mode = "ok"
    assert until(lambda: camera_health(sorter)["ok"] is True, 30)
    assert cam.opens > opens  # it was reopened
    assert until(lambda: sorter.summary.items > items, 60)  # and sorting resumed


@pytest.mark.parametrize("camera_run", [3.0], indirect=True)  # a 1 fps camera is slow, not stalled
def test_slow_camera_is_reported_and_keeps_sorting(camera_run):
    cam, sorter = camera_run
    assert until(lambda: sorter.summary.items >= 1, 60)
    cam.mode = "slow"
    assert until(lambda: "fps" in camera_health(sorter)["detail"] and sorter.reader.health.state == "slow", 30)
    assert camera_health(sorter)["ok"] is True  # slow is a warning, not a failure
    cam.mode = "ok"
