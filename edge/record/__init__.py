"""Stage 6: record what happened: SQLite event log, retraining captures, MQTT telemetry."""

from ecosorter.edge.record.event import Event
from ecosorter.edge.record.events import EventLog

__all__ = ["Event", "EventLog"]
