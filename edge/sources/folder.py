"""The simulator's camera: photos from a folder, each shown as an item on an empty tray."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ecosorter.edge.errors import ImageError, SourceError
from ecosorter.edge.preprocess.decode import decode_image
from ecosorter.edge.sources.base import Frame

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# TrashNet trays are white poster board; the empty tray is that board without an item.
EMPTY_TRAY_RGB = (214, 210, 204)


class FolderSource:
    live = False

    def __init__(self, folder: str | Path, item_frames: int = 4, empty_frames: int = 3,
                 loop: bool = False, fps: float = 0.0, on_bad_image=None):
        self.folder = Path(folder)
        self.name = f"folder:{self.folder}"
        self.item_frames, self.empty_frames, self.loop = item_frames, empty_frames, loop
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.on_bad_image = on_bad_image  # called with the ImageError; the frame is skipped
        self._files: list[Path] = []
        self._schedule: Iterator[Path | None] = iter(())
        self._bad: set[Path] = set()
        self._seq = 0
        self._current: tuple[Path | None, np.ndarray] | None = None
        self._shape = (384, 512, 3)
        self._next_t = 0.0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"camera.device {self.folder}: not a folder of images")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in SUFFIXES)
        if not self._files:
            raise SourceError(f"camera.device {self.folder}: no images ({', '.join(sorted(SUFFIXES))})")
        self._schedule = self._frames()

    def _frames(self) -> Iterator[Path | None]:
        yield from [None] * self.empty_frames  # the bin starts empty: the trigger learns the tray
        while True:
            for f in self._files:
                yield from [f] * self.item_frames
                yield from [None] * self.empty_frames
            if not self.loop:
                return

    def read(self) -> Frame | None:
        if self.period:
            now = time.monotonic()
            if self._next_t > now:
                time.sleep(self._next_t - now)
            self._next_t = max(now, self._next_t) + self.period
        for path in self._schedule:
            if path in self._bad:
                continue
            pixels = self._pixels(path)
            if pixels is None:  # an unreadable photo is skipped, the run keeps going
                continue
            self._seq += 1
            return Frame(pixels, "rgb", time.monotonic(), self._seq, path.name if path else "")
        return None

    def _pixels(self, path: Path | None) -> np.ndarray | None:
        if self._current is not None and self._current[0] == path:
            return self._current[1]
        if path is None:
            pixels = np.empty(self._shape, np.uint8)
            pixels[:] = EMPTY_TRAY_RGB
        else:
            try:
                pixels = decode_image(path)
            except ImageError as e:
                self._bad.add(path)
                if self.on_bad_image:
                    self.on_bad_image(e)
                return None
            self._shape = pixels.shape
        self._current = (path, pixels)
        return pixels

    def close(self) -> None:
        self._current = None
