"""Servo profiles: a rotating chute with a trapdoor, or one flap per compartment.

Every step waits for its servo's travel + settle before the next dependent step; servos are
detached (no pulses, no hum) only after they have arrived.
"""

from __future__ import annotations

from ecosorter.edge.hardware.actuator import Actuator, Axis


class ChuteActuator(Actuator):
    """door closed? -> chute to the compartment -> door open, drop -> door closed -> chute home -> detach.

    The chute is only ever commanded after the trapdoor has had its travel time to close.
    """

    profile = "chute"
    clears_tray = True

    def __init__(self, chute: Axis, trapdoor: Axis, angles: list[float], home: float, door_closed: float,
                 door_open: float, drop_s: float, **kw):
        super().__init__(compartments=len(angles), **kw)
        self.chute, self.trapdoor = chute, trapdoor
        self.angles, self.home, self.door_closed, self.door_open = list(angles), home, door_closed, door_open
        self.drop_s = drop_s
        self.axes = [trapdoor, chute]
        self._devices += [chute.servo, trapdoor.servo, *(a.switch for a in self.axes if a.switch is not None),
                          *(a.feedback for a in self.axes if a.feedback is not None)]
        self.park()

    def _door_shut(self) -> None:
        if self.trapdoor.angle != self.door_closed:  # unknown or open: close it and wait
            self._step(self.trapdoor, self.door_closed, "trapdoor close")
        else:
            self.trapdoor.confirm(self.door_closed)

    def _sequence(self, compartment: int) -> None:
        self._door_shut()
        self._step(self.chute, self.angles[compartment], "chute move")
        self.trapdoor.confirm(self.door_closed)  # both switches checked before the door opens
        self._step(self.trapdoor, self.door_open, "trapdoor open", drops=True)
        self._wait(self.drop_s, "drop")
        self._step(self.trapdoor, self.door_closed, "trapdoor close")
        self._step(self.chute, self.home, "chute home")
        self._detach_all()

    def parked(self) -> bool:
        return self.trapdoor.angle == self.door_closed and self.chute.angle == self.home

    def open_below(self) -> tuple[bool, int | None]:
        if self.trapdoor.at(self.door_closed):
            return False, None
        where = self.chute.angle  # None: lost mid-travel
        return True, (self.angles.index(where) if where in self.angles else None)

    def _park(self) -> None:
        # Door first, then the chute: the chute never turns over an open trapdoor.
        self._step(self.trapdoor, self.door_closed, "trapdoor close")
        self._step(self.chute, self.home, "chute home")
        self._detach_all()


class FlapsActuator(Actuator):
    """One flap servo per compartment: open the item's flap, drop, close, detach."""

    profile = "flaps"
    clears_tray = True

    def __init__(self, flaps: list[Axis], closed: float, open_: float, drop_s: float, **kw):
        super().__init__(compartments=len(flaps), **kw)
        self.flaps, self.closed_angle, self.open_angle, self.drop_s = list(flaps), closed, open_, drop_s
        self.axes = self.flaps
        self._devices += [f.servo for f in self.flaps] + [f.feedback for f in self.flaps if f.feedback is not None]
        self.park()

    def _sequence(self, compartment: int) -> None:
        for i, flap in enumerate(self.flaps):  # after an interruption, close what may be open first
            if flap.angle != self.closed_angle:
                self._step(flap, self.closed_angle, f"flap{i} close")
                flap.detach()
        flap = self.flaps[compartment]
        self._step(flap, self.open_angle, f"flap{compartment} open", drops=True)
        self._wait(self.drop_s, "drop")
        self._step(flap, self.closed_angle, f"flap{compartment} close")
        flap.detach()

    def parked(self) -> bool:
        return all(f.angle == self.closed_angle for f in self.flaps)

    def open_below(self) -> tuple[bool, int | None]:
        open_ = [i for i, f in enumerate(self.flaps) if not f.at(self.closed_angle)]
        return bool(open_), (open_[0] if len(open_) == 1 else None)

    def _park(self) -> None:
        # One flap at a time: seven stalled servos at once would brown out the supply.
        for i, flap in enumerate(self.flaps):
            self._step(flap, self.closed_angle, f"flap{i} close")
            flap.detach()
