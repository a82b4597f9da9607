"""USB/V4L2 cameras, RTSP/HTTP streams and video files through OpenCV (BGR frames)."""

from __future__ import annotations

import time

from ecosorter.edge.errors import SourceError
from ecosorter.edge.sources.base import Frame


class OpenCVSource:
    def __init__(self, device: str, width: int = 640, height: int = 480, fps: float = 15.0,
                 live: bool = True, loop: bool = False):
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.live, self.loop = live, loop
        self.name = f"opencv:{device}"
        self._cap = None
        self._seq = 0

    def open(self) -> None:
        try:
            import cv2
        except ImportError as e:
            raise SourceError(f"camera.source = 'opencv' needs opencv-python-headless ({e})") from None
        target = int(self.device) if self.device.isdigit() else self.device
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"camera.device {self.device!r}: cannot open (unplugged, busy, or wrong path/URL?)")
        if self.live:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of stale ones
        self._cap = cap

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"{self.name}: not open")
        ok, pixels = self._cap.read()
        if not ok or pixels is None:
            if self.live:
                raise SourceError(f"camera.device {self.device!r}: no frame (unplugged?)")
            if self.loop:
                import cv2

                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, pixels = self._cap.read()
            if not ok or pixels is None:
                return None
        self._seq += 1
        return Frame(pixels, "bgr", time.monotonic(), self._seq)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
