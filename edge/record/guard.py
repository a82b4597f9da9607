"""The record comes first: an item the bin cannot record is not sorted, and a damaged log is shown.

- a disk that cannot take the record (full because of something else, read-only) is the `disk`
  hold: nothing moves, decided items wait on the tray, and it clears by itself once the waiting
  events are written and there is room again (checked every tick, photos evicted first);
- a damaged events.db, moved aside by the event log, is the latched `log` fault (blocks nothing):
  the page, MQTT and the machine log show it until a person clears it; damage written in place
  under the running bin is found by the periodic check (edge/record/integrity.py).
"""

from __future__ import annotations

from ecosorter.edge.clock import SYSTEM_CLOCK, Clock
from ecosorter.edge.machine import Machine
from ecosorter.edge.record.events import EventLog
from ecosorter.edge.record.integrity import LogCheck

RETRY_S = 1.0  # while held: how often to try writing what waits


class RecordGuard:
    def __init__(self, events: EventLog, machine: Machine, clock: Clock = SYSTEM_CLOCK, check_every_s: float = 0.0):
        self.events, self.machine, self.clock = events, machine, clock
        self.check = LogCheck(events, check_every_s, clock)
        self._tried = -1e9
        events.on_damaged = self._damaged
        if events.damaged:  # found when the log was opened, before the machine existed
            self._damaged(events.damaged)

    def _damaged(self, detail: str) -> None:
        self.machine.raise_("log", detail)

    def recorded(self, ok: bool) -> None:
        """After each append: one that had to wait in memory holds the bin at once."""
        if not ok:
            self.machine.raise_("disk", self.events.error or "the event log cannot be written")
        elif self.machine.active("disk") and self.events.room():  # it wrote all that waited: free again
            self.machine.clear("disk")

    def tick(self) -> None:
        """Every loop pass, before anything moves: hold while the next record would not fit."""
        if not self.events.watch_files():  # events.db or its -wal deleted or replaced: a new log now
            self.machine.raise_("disk", self.events.error or "the event log cannot be written")
        rewritten = self.check.tick()  # found damaged in place: set aside, the journal in a new log
        if rewritten is not None:
            self.recorded(rewritten)
        held = self.machine.active("disk")
        if held:
            now = self.clock.monotonic()
            if now - self._tried < RETRY_S:
                return
            self._tried = now
            if self.events.room() and self.events.retry():
                self.machine.clear("disk")
        elif not self.events.room():
            self.machine.raise_("disk", f"no room left on the disk holding {self.events.path.parent}")

    def close(self) -> None:
        self.check.close()
