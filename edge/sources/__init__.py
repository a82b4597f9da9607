"""Stage 1: frames from a camera, a video, or a folder of photos (the simulator)."""

from ecosorter.edge.sources.base import Frame, FrameSource
from ecosorter.edge.sources.factory import open_source
from ecosorter.edge.sources.latest import LatestFrameReader

__all__ = ["Frame", "FrameSource", "LatestFrameReader", "open_source"]
