"""camera.* config -> a FrameSource."""

from __future__ import annotations

from ecosorter.edge.config import CameraConfig
from ecosorter.edge.sources.base import FrameSource


def open_source(cfg: CameraConfig, on_bad_image=None) -> FrameSource:
    if cfg.source == "folder":
        from ecosorter.edge.sources.folder import FolderSource

        return FolderSource(cfg.device, cfg.item_frames, cfg.empty_frames, cfg.loop,
                            fps=cfg.fps if cfg.realtime else 0.0, on_bad_image=on_bad_image)
    if cfg.source == "video":
        from ecosorter.edge.sources.opencv import OpenCVSource

        return OpenCVSource(cfg.device, cfg.width, cfg.height, cfg.fps, live=False, loop=cfg.loop)
    if cfg.source == "opencv":
        from ecosorter.edge.sources.opencv import OpenCVSource

        return OpenCVSource(cfg.device, cfg.width, cfg.height, cfg.fps, live=True)
    from ecosorter.edge.sources.picamera2 import Picamera2Source

    return Picamera2Source(cfg.width, cfg.height, cfg.fps)
