"""The kiosk status page, JSON and /metrics, and the in-memory board they read."""

from ecosorter.edge.status.board import StatusBoard

__all__ = ["StatusBoard"]
