"""Item presence: learn the empty tray, see an item arrive, wait until it is still.

Works on a 64x48 grey thumbnail of the tray region, so watching an empty tray costs a few
hundred microseconds a frame and no inference at all.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ecosorter.edge.preprocess.transform import nearest_indices, roi_pixels

if TYPE_CHECKING:  # types only: edge.config runs rules that import this package back
    from ecosorter.edge.config import TriggerConfig

THUMB_W, THUMB_H = 64, 48


class TriggerState(enum.Enum):
    LEARNING = "learning"  # averaging the empty tray
    EMPTY = "empty"
    MOVING = "moving"  # something changed; waiting for it to be still
    SETTLED = "settled"  # classify this frame
    DECIDED = "decided"  # waiting for the tray to be empty again


def thumbnail(pixels: np.ndarray, roi: tuple[float, float, float, float] | None) -> np.ndarray:
    x0, y0, cw, ch = roi_pixels(roi, pixels.shape[0], pixels.shape[1])
    rows = nearest_indices(ch, THUMB_H) + y0
    cols = nearest_indices(cw, THUMB_W) + x0
    return pixels[rows[:, None], cols[None, :], :3].astype(np.float32).mean(axis=2)


class _Rearm:
    """What both image-watching triggers share: one decision per item, re-armed after a drop."""

    state: TriggerState
    thumb: np.ndarray | None = None
    cfg: TriggerConfig
    _still = 0
    _gone: np.ndarray | None = None  # the routed item as it looked when decided

    def decided(self) -> None:
        if self.state is TriggerState.SETTLED:
            self.state = TriggerState.DECIDED
            self._gone = self.thumb

    def rearm(self) -> None:
        """The routed item has left the tray (a trapdoor or flap dropped it): the next still item is
        a new one, even if the camera never saw the tray empty in between (it was put down during
        the move). One that looks just like the routed item is that item, still there (it did not
        fall): it is not decided twice, and waits to be taken off."""
        if self.state is TriggerState.DECIDED:
            self.state, self._still = TriggerState.MOVING, 0

    def _settled(self, thumb: np.ndarray) -> TriggerState:
        gone = self._gone
        if gone is not None and float(np.abs(thumb - gone).mean()) < self.cfg.still_threshold:
            return TriggerState.DECIDED
        self._gone = None
        return TriggerState.SETTLED

    def _emptied(self) -> TriggerState:
        self._gone = None
        return TriggerState.EMPTY


class VisionTrigger(_Rearm):
    def __init__(self, cfg: TriggerConfig, roi: tuple[float, float, float, float] | None = None):
        self.cfg, self.roi = cfg, roi
        self.state = TriggerState.LEARNING
        self._learn: list[np.ndarray] = []
        self._background: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        self._still = 0
        self.change = 0.0  # mean |frame - empty tray|, for status and tuning

    def update(self, pixels: np.ndarray) -> TriggerState:
        thumb = thumbnail(pixels, self.roi)
        prev, self._prev = self._prev, thumb
        self.thumb = thumb
        if self.state is TriggerState.LEARNING:
            self._learn.append(thumb)
            if len(self._learn) >= self.cfg.empty_learn_frames:
                self._background = np.mean(self._learn, axis=0)
                self._learn.clear()
                self.state = TriggerState.EMPTY
            return self.state
        assert self._background is not None
        self.change = float(np.abs(thumb - self._background).mean())
        present = self.change > self.cfg.change_threshold
        motion = float(np.abs(thumb - prev).mean()) if prev is not None else 255.0
        if self.state is TriggerState.EMPTY:
            if present:
                self.state, self._still = TriggerState.MOVING, 0
            else:  # follow slow light changes while nothing is there
                self._background += 0.05 * (thumb - self._background)
        elif self.state is TriggerState.MOVING:
            if not present:
                self.state = self._emptied()
            else:
                self._still = self._still + 1 if motion < self.cfg.still_threshold else 0
                if self._still >= self.cfg.still_frames:
                    self.state = self._settled(thumb)
        elif self.state in (TriggerState.SETTLED, TriggerState.DECIDED):
            if not present:
                self.state = self._emptied()
            elif motion >= self.cfg.still_threshold:
                # moved before we decided; or after: touched, or swapped for another item without the
                # tray ever looking empty (a hand, a frozen camera coming back). Still again, it is
                # the same item (no new decision) or a new one.
                self.state, self._still = TriggerState.MOVING, 0
        return self.state


class SensorTrigger(_Rearm):
    """A break-beam/PIR/ultrasonic input says an item is there; the image must still be still."""

    def __init__(self, cfg: TriggerConfig, is_present: Callable[[], bool], roi=None):
        self.cfg, self.is_present, self.roi = cfg, is_present, roi
        self.state = TriggerState.EMPTY
        self._prev: np.ndarray | None = None
        self._still = 0
        self.change = 0.0

    def update(self, pixels: np.ndarray) -> TriggerState:
        thumb = thumbnail(pixels, self.roi)
        prev, self._prev = self._prev, thumb
        self.thumb = thumb
        motion = float(np.abs(thumb - prev).mean()) if prev is not None else 255.0
        if not self.is_present():
            self.state = self._emptied()
        elif self.state is TriggerState.DECIDED and motion >= self.cfg.still_threshold:
            self.state, self._still = TriggerState.MOVING, 0  # touched or swapped: see VisionTrigger
        elif self.state in (TriggerState.EMPTY, TriggerState.MOVING):
            self._still = self._still + 1 if motion < self.cfg.still_threshold else 0
            self.state = self._settled(thumb) if self._still >= self.cfg.still_frames else TriggerState.MOVING
        return self.state


class AlwaysTrigger:
    """Every frame is an item (bench tests, a conveyor that always has something)."""

    state = TriggerState.SETTLED
    change = 0.0
    thumb = None

    def update(self, pixels: np.ndarray) -> TriggerState:
        self.state = TriggerState.SETTLED
        return self.state

    def decided(self) -> None:
        pass

    def rearm(self) -> None:
        pass


def make_trigger(cfg: TriggerConfig, roi=None, is_present: Callable[[], bool] | None = None):
    if cfg.mode == "vision":
        return VisionTrigger(cfg, roi)
    if cfg.mode == "sensor":
        if is_present is None:
            from ecosorter.edge.errors import ConfigError

            raise ConfigError("trigger.mode", "'sensor' needs an item sensor (hardware.item_sensor_pin)")
        return SensorTrigger(cfg, is_present, roi)
    return AlwaysTrigger()
