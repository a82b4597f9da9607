"""Raspberry Pi cameras through picamera2 (from apt: python3-picamera2), imported lazily.

picamera2's "RGB888" arrays are B,G,R in memory and "XRGB8888" are B,G,R,X: both are "bgr"
here, and the preprocessor never reads the 4th channel, so no conversion copy is made.
"""

from __future__ import annotations

import time

from ecosorter.edge.errors import SourceError
from ecosorter.edge.sources.base import Frame

FORMATS = {"RGB888": "bgr", "XRGB8888": "bgr", "BGR888": "rgb", "XBGR8888": "rgb"}


class Picamera2Source:
    live = True

    def __init__(self, width: int = 640, height: int = 480, fps: float = 15.0, fmt: str = "RGB888",
                 camera_num: int = 0):
        if fmt not in FORMATS:
            raise SourceError(f"picamera2 format {fmt!r}; allowed: {', '.join(FORMATS)}")
        self.width, self.height, self.fps, self.fmt, self.camera_num = width, height, fps, fmt, camera_num
        self.name = f"picamera2:{camera_num}"
        self._cam = None
        self._seq = 0

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise SourceError("camera.source = 'picamera2' needs python3-picamera2 from apt and a venv "
                              f"with --system-site-packages ({e})") from None
        try:
            cam = Picamera2(self.camera_num)
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": self.fmt},
                controls={"FrameRate": self.fps}, buffer_count=2)
            cam.configure(config)
            cam.start()
        except Exception as e:  # libcamera raises RuntimeError/IndexError/OSError when absent
            raise SourceError(f"picamera2 camera {self.camera_num}: cannot start ({type(e).__name__}: {e})") from None
        self._cam = cam

    def read(self) -> Frame | None:
        if self._cam is None:
            raise SourceError(f"{self.name}: not open")
        try:
            pixels = self._cam.capture_array("main")
        except Exception as e:
            raise SourceError(f"{self.name}: capture failed ({type(e).__name__}: {e})") from None
        self._seq += 1
        return Frame(pixels, FORMATS[self.fmt], time.monotonic(), self._seq)

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None
