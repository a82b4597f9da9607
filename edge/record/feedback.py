"""What people say about sorted items (the page, MQTT, the CLI): a "wrong" flag or the true label.

Both keep the item's photo for retraining, tell the drift watch and the page. The Sorter wires this
in; nothing here moves the bin or waits on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ecosorter.edge.decide.drift import DriftWatch
    from ecosorter.edge.record import EventLog
    from ecosorter.edge.record.captures import CaptureStore
    from ecosorter.edge.status import StatusBoard

log = logging.getLogger("ecosorter.feedback")


class Feedback:
    def __init__(self, events: EventLog | None, captures: CaptureStore | None, board: StatusBoard | None,
                 label_ids: Callable[[], list[str]], drift: Callable[[], DriftWatch]):
        # getters, not values: a live model swap changes the labels' model and starts a new drift watch
        self.events, self.captures, self.board = events, captures, board
        self._label_ids, self._drift = label_ids, drift

    def flag(self, event_id: str) -> bool:
        """A person says this item was sorted wrongly: keep its photo for retraining."""
        ok = self.events.flag(event_id) if self.events is not None else False
        self._drift().wrong(event_id)
        if ok:
            self._keep_photo(event_id)
            if self.board is not None:
                self.board.flagged(event_id)
        return ok

    def label(self, event_id: str, label: str, who: str) -> bool:
        """A person says what the item really was: kept for retraining, photo too."""
        if label not in self._label_ids() or self.events is None:
            return False
        ok = self.events.set_label(event_id, label, who)
        if ok:
            self._drift().label(event_id, label)
            self._keep_photo(event_id)
            if self.board is not None:
                self.board.labelled(event_id, label)
        return ok

    def _keep_photo(self, event_id: str) -> None:
        """A flagged or labelled item's photo is what retraining needs: keep it (longest), if still held."""
        if self.captures is None or self.events is None:
            return
        image = self.captures.flag(event_id)
        if image:
            self.events.set_image(event_id, image)
        else:
            log.warning("item %s: its photo is no longer held (only the last %d are), so export will not have it",
                        event_id, self.captures.RECENT)
