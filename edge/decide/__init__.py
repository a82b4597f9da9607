"""Stage 4: is an item on the tray, and where does it go."""

from ecosorter.edge.decide.presence import TriggerState, make_trigger
from ecosorter.edge.decide.vote import CompartmentMap, Decision, Voter

__all__ = ["CompartmentMap", "Decision", "TriggerState", "Voter", "make_trigger"]
