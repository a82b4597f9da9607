"""The one clock seam: everything on the sorting path that waits or reads the time asks a Clock.

Like gpiozero's pin-factory seam, the default is the real thing (`SYSTEM_CLOCK`); the simulator
injects a `VirtualClock`, in which `sleep()` advances time at once and runs whatever was
scheduled in between (a lid opening, a servo arriving), so a day of a bin runs in minutes and
every run with the same scenario gives the same timeline.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


class Clock:
    """Real time. Subclasses replace all four methods together."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        """Wall-clock seconds since the epoch (event times, day rollover)."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Like `event.wait(timeout)`: True as soon as the event is set."""
        return event.wait(timeout)


SYSTEM_CLOCK = Clock()


class VirtualClock(Clock):
    """Simulated time for one thread: `sleep` jumps forward, firing due callbacks in time order.

    Callbacks run in the sleeping thread at their own virtual instant (`monotonic()` reads
    their scheduled time while they run), so a callback that drives a pin is seen by the code
    that slept exactly as a real edge at that moment would be.
    """

    def __init__(self, start: float = 0.0, epoch: float = 1_790_000_000.0):
        self._now = float(start)
        self._epoch = epoch - start  # wall time = epoch offset + virtual seconds
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._epoch + self._now

    def call_at(self, t: float, fn: Callable[[], None]) -> None:
        """Run `fn` when virtual time reaches `t` (at once on the next sleep if t is past)."""
        heapq.heappush(self._queue, (max(t, self._now), next(self._order), fn))

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def advance_to(self, t: float) -> None:
        while self._queue and self._queue[0][0] <= t:
            due, _, fn = heapq.heappop(self._queue)
            self._now = max(self._now, due)
            fn()
        self._now = max(self._now, t)

    def sleep(self, seconds: float) -> None:
        self.advance_to(self._now + max(0.0, seconds))

    def wait(self, event: threading.Event, timeout: float) -> bool:
        # Callbacks that set the event run inside advance_to; stop at the first that does.
        end = self._now + max(0.0, timeout)
        while not event.is_set():
            due = self.next_due()
            if due is None or due > end:
                self._now = max(self._now, end)
                break
            self.advance_to(due)
        return event.is_set()
