"""Stage 5: route the item (servos, LEDs) and leave the hardware safe on every exit.

Names are loaded on first use: `edge.config` runs the machine rules in `hardware.check`, and
importing this package must not pull in the factory (which imports `edge.config` back).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"Actuator": "actuator", "NullActuator": "actuator", "RouteResult": "actuator",
         "make_actuator": "factory", "make_pin_factory": "pins", "validate_pins": "pins"}

__all__ = list(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
