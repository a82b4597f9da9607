"""Camera health from the pixels: too dark (lights off, lens covered) or too blurred (dirty lens).

Darkness is judged on every checked frame. Blur is judged only on frames with an item on the
tray: an empty tray is smooth by nature. Both look at the 64x48 grey thumbnail the trigger
already computes, so the check costs microseconds.
"""

from __future__ import annotations

import numpy as np


def brightness(thumb: np.ndarray) -> float:
    return float(thumb.mean())


def sharpness(thumb: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: low when the image is blurred."""
    t = thumb.astype(np.float32)
    lap = 4 * t[1:-1, 1:-1] - t[:-2, 1:-1] - t[2:, 1:-1] - t[1:-1, :-2] - t[1:-1, 2:]
    return float(lap.var())


class QualityMonitor:
    """Raises an alert after `patience` bad frames in a row, clears it after one good one."""

    def __init__(self, dark_below: float = 25.0, blur_below: float = 50.0, patience: int = 5):
        self.dark_below, self.blur_below, self.patience = dark_below, blur_below, patience
        self._dark = self._blur = 0
        self.alert = ""

    def check(self, thumb: np.ndarray, item_present: bool) -> str:
        b = brightness(thumb)
        self._dark = self._dark + 1 if b < self.dark_below else 0
        if item_present:
            s = sharpness(thumb)
            self._blur = self._blur + 1 if s < self.blur_below else 0
        if self._dark >= self.patience:
            self.alert = f"too dark (mean brightness {b:.0f}/255): lights off or lens covered?"
        elif self._blur >= self.patience:
            self.alert = "image too blurred on the last items: dirty or misfocused lens?"
        elif self._dark == 0 and (self._blur == 0 or not item_present):
            self.alert = ""
        return self.alert
