"""Video files through OpenCV, picamera2 through a stand-in for the calls we use, runtime selection."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from ecosorter.edge.backends import available_runtimes, open_classifier
from ecosorter.edge.errors import BackendError, SourceError
from ecosorter.edge.preprocess import decode_image
from ecosorter.edge.sources.opencv import OpenCVSource
from ecosorter.edge.sources.picamera2 import Picamera2Source
from tests.conftest import SAMPLES

DEMO = SAMPLES.parent / "demo_int8.tflite"


def test_video_file_source_reads_bgr_frames_and_loops(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "tray.avi"
    photo = cv2.resize(decode_image(sorted(SAMPLES.glob("*.jpg"))[0])[..., ::-1], (320, 240))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for _ in range(5):
        w.write(photo)
    w.release()
    src = OpenCVSource(str(path), live=False, loop=True)
    src.open()
    frames = [src.read() for _ in range(12)]  # more than the 5 in the file: it loops
    src.close()
    assert all(f is not None and f.order == "bgr" and f.pixels.shape == (240, 320, 3) for f in frames)
    assert np.abs(frames[0].pixels.astype(int) - photo).mean() < 6  # MJPG is lossy
    with pytest.raises(SourceError, match="cannot open"):
        OpenCVSource(str(tmp_path / "missing.avi"), live=False).open()


class StandInPicamera2:
    """The five Picamera2 calls the source uses, returning what picamera2 returns for RGB888."""

    instances: list = []

    def __init__(self, camera_num=0):
        self.calls = [("init", camera_num)]
        StandInPicamera2.instances.append(self)

    def create_video_configuration(self, main, controls, buffer_count):
        self.calls.append(("config", main["format"], main["size"], controls["FrameRate"]))
        return {"main": main}

    def configure(self, config):
        self.config = config

    def start(self):
        self.calls.append(("start",))

    def capture_array(self, name):
        w, h = self.config["main"]["size"]
        a = np.zeros((h, w, 3), np.uint8)
        a[..., 0] = 255  # RGB888 is B,G,R in memory: a blue frame has byte 0 set
        return a

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))


def test_picamera2_source_through_a_stand_in(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=StandInPicamera2))
    src = Picamera2Source(640, 480, 15.0)
    src.open()
    frame = src.read()
    src.close()
    cam = StandInPicamera2.instances[-1]
    assert cam.calls == [("init", 0), ("config", "RGB888", (640, 480), 15.0), ("start",), ("stop",), ("close",)]
    assert frame.order == "bgr" and frame.pixels[0, 0, 0] == 255


def test_picamera2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SourceError, match="python3-picamera2 from apt"):
        Picamera2Source().open()


def test_runtime_selection_and_tflite_runtime_under_numpy2():
    runtimes = available_runtimes()
    assert not runtimes["litert"].startswith("unavailable")
    if int(np.__version__.split(".")[0]) >= 2:
        assert "tflite-runtime" in runtimes and runtimes["tflite-runtime"].startswith("unavailable")
        with pytest.raises(BackendError, match="tflite-runtime"):
            open_classifier(DEMO.read_bytes(), "tflite-runtime")
    c = open_classifier(DEMO.read_bytes(), "auto", num_threads=1)
    assert c.runtime == "litert" and c.num_threads == 1
    with pytest.raises(BackendError, match="allowed: auto, litert"):
        open_classifier(DEMO.read_bytes(), "onnx")


def test_model_update_by_url_from_a_local_server(tmp_path):
    import hashlib
    import http.server
    import threading
    from functools import partial

    from ecosorter.edge.model.store import DownloadPolicy, ModelStore

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "m.tflite").write_bytes(DEMO.read_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        allowed = DownloadPolicy(hosts=(f"127.0.0.1:{server.server_port}",), allow_http=True)
        store = ModelStore(tmp_path / "state", downloads=allowed)
        got = store.fetch(f"http://127.0.0.1:{server.server_port}/m.tflite")
        r = store.install(got, hashlib.sha256(DEMO.read_bytes()).hexdigest(), allow_unsigned=True)
        assert store.current.resolve().read_bytes() == DEMO.read_bytes() and r.labels[0] == "kaca"
    finally:
        server.shutdown()
