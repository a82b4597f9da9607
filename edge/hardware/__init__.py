"""Stage 5: route the item (servos, LEDs) and leave the hardware safe on every exit."""

from ecosorter.edge.hardware.actuator import Actuator, NullActuator, RouteResult
from ecosorter.edge.hardware.factory import make_actuator
from ecosorter.edge.hardware.pins import make_pin_factory, validate_pins

__all__ = ["Actuator", "NullActuator", "RouteResult", "make_actuator", "make_pin_factory", "validate_pins"]
