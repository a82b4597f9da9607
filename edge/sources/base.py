"""A frame and the small interface every source implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Frame:
    pixels: np.ndarray  # H x W x 3 (or 4: XRGB) uint8
    order: str  # "bgr" or "rgb": the order of the first three channels in memory
    timestamp: float  # time.monotonic() at capture
    seq: int
    name: str = ""  # the file a simulated frame came from


class FrameSource(Protocol):
    """`read()` blocks for the next frame; None means the source ended (a folder, a file).
    It raises SourceError when the device fails; `close()` releases the device."""

    name: str
    live: bool  # a camera: frames keep coming and old ones are worthless

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...
