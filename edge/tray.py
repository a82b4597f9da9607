"""What is on the tray when the bin cannot route it: an item gone through an open floor, or one
put down as the bin stops. Sorter wires these in; they decide nothing about routing.
"""

from __future__ import annotations

from collections.abc import Callable

from ecosorter.edge.decide import TriggerState
from ecosorter.edge.sources import Frame


def vanished(open_below: Callable[[], tuple[bool, int | None]], taken: str) -> tuple[int | None, str]:
    """(routed_to, note) for an item gone from the tray without a route: through an open floor it
    is recorded with the compartment it fell into (None if unknown), else it was taken off by hand."""
    is_open, below = open_below()
    if not is_open:
        return None, taken
    if below is None:
        return None, "fell through the open tray floor; where it landed is unknown"
    return below, f"fell through the open tray floor into compartment {below}"


def still_item(read: Callable[[], Frame | None], update: Callable[[object], TriggerState],
               frames: int) -> Frame | None:
    """Look at the tray for up to `frames` frames: the frame of a new item lying still there, or None
    (empty, the item just recorded still in view, or something still moving: a hand)."""
    frame, state = None, TriggerState.EMPTY
    for _ in range(frames):
        frame = read()
        state = update(frame.pixels) if frame is not None else TriggerState.EMPTY
        if state is not TriggerState.MOVING:
            break
    return frame if state is TriggerState.SETTLED else None
