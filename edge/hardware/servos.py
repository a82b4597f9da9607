"""Servo profiles: a rotating chute with a trapdoor, or one flap per compartment.

Servos are open-loop: each sequence step has a settle time, and the whole sequence a time
budget; the interlock is checked between steps. After every sequence the servos are detached
(no pulses), so they do not hum or jitter while they wait for the next item.
"""

from __future__ import annotations

from ecosorter.edge.hardware.actuator import Actuator, HardwareFault


class ChuteActuator(Actuator):
    """move chute -> settle -> open trapdoor -> drop -> close -> settle -> chute home -> detach."""

    profile = "chute"

    def __init__(self, chute, trapdoor, angles: list[float], home: float, door_closed: float,
                 door_open: float, settle_s: float, drop_s: float, **kw):
        self.chute, self.trapdoor = chute, trapdoor
        self.angles, self.home, self.door_closed, self.door_open = angles, home, door_closed, door_open
        self.settle_s, self.drop_s = settle_s, drop_s
        self._door_is_open = False
        super().__init__(compartments=len(angles), **kw)
        self._devices += [chute, trapdoor]
        self._safe()

    def _move(self, compartment: int, t0: float) -> None:
        if self._door_is_open:  # never rotate the chute with the trapdoor open
            raise HardwareFault("trapdoor open before a chute move")
        self.chute.angle = self.angles[compartment]
        self._wait(self.settle_s, t0, "chute move")
        self.trapdoor.angle = self.door_open
        self._door_is_open = True
        self._wait(self.drop_s, t0, "drop")
        self._close_door()
        self._wait(self.settle_s, t0, "trapdoor close")
        self.chute.angle = self.home
        self._wait(self.settle_s, t0, "chute home")
        self.chute.detach()
        self.trapdoor.detach()

    def _close_door(self) -> None:
        self.trapdoor.angle = self.door_closed
        self._door_is_open = False

    def _safe(self) -> None:
        # Door first, then the chute: the chute never turns over an open trapdoor.
        self._close_door()
        self.chute.angle = self.home
        self.chute.detach()
        self.trapdoor.detach()


class FlapsActuator(Actuator):
    """One flap servo per compartment: open the item's flap, drop, close, detach."""

    profile = "flaps"

    def __init__(self, flaps: list, closed: float, open_: float, drop_s: float, settle_s: float, **kw):
        self.flaps, self.closed, self.open_, self.drop_s, self.settle_s = flaps, closed, open_, drop_s, settle_s
        super().__init__(compartments=len(flaps), **kw)
        self._devices += list(flaps)
        self._safe()

    def _move(self, compartment: int, t0: float) -> None:
        flap = self.flaps[compartment]
        flap.angle = self.open_
        self._wait(self.drop_s, t0, "flap open")
        flap.angle = self.closed
        self._wait(self.settle_s, t0, "flap close")
        flap.detach()

    def _safe(self) -> None:
        for flap in self.flaps:
            flap.angle = self.closed
        for flap in self.flaps:
            flap.detach()
