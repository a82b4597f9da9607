"""`ecosorter calibrate`: set each compartment's servo angle by eye, saved into the config file
with its comments and layout kept (tomlkit)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ecosorter.edge.errors import ConfigError

HELP = "enter = keep, a number = set the angle, + / - = nudge by 2 degrees, q = stop without saving"


def _adjust(name: str, angle: float, move: Callable[[float], None], ask: Callable[[str], str],
            say: Callable[[str], None], span: tuple[float, float] = (-90.0, 90.0)) -> float | None:
    lo, hi = span
    while True:
        move(angle)
        try:
            answer = ask(f"{name}: {angle:.0f} deg > ").strip()
        except EOFError:  # Ctrl-D, or no terminal (ssh without -t, a pipe): as q, never a traceback
            say("\n  end of input: stopping without saving (calibrate needs a terminal to answer)")
            return None
        if answer == "":
            return angle
        if answer == "q":
            return None
        if answer in ("+", "-"):
            angle = max(lo, min(hi, angle + (2.0 if answer == "+" else -2.0)))
            continue
        try:
            value = float(answer)
        except ValueError:
            say(f"  {answer!r}? {HELP}")
            continue
        if not lo <= value <= hi:
            say(f"  angles are {lo:g}..{hi:g} (hardware.servo_min_angle / servo_max_angle)")
            continue
        angle = value


def _fit(axis, points: list[tuple[float, float]]) -> tuple[float, float]:
    """The feedback readings at the ends of the servo's span, from (angle, reading) pairs (least squares)."""
    if len({a for a, _ in points}) < 2:
        raise ConfigError(f"hardware.feedback_at_min ({axis.name})", "calibration needs two different angles")
    n = len(points)
    ma = sum(a for a, _ in points) / n
    mv = sum(v for _, v in points) / n
    slope = sum((a - ma) * (v - mv) for a, v in points) / sum((a - ma) ** 2 for a, _ in points)
    lo, hi = axis.span
    at_min, at_max = mv + slope * (lo - ma), mv + slope * (hi - ma)
    if abs(at_max - at_min) < 0.05:
        raise ConfigError(f"hardware.feedback_channels ({axis.name})", f"its reading hardly changes across the span "
                          f"({at_min:.3f} .. {at_max:.3f}): is the feedback wire on that channel?")
    return round(at_min, 4), round(at_max, 4)


def calibrate(config_path: Path, actuator, ask: Callable[[str], str] = input,
              say: Callable[[str], None] = print, names: list[str] | tuple[str, ...] = ()) -> bool:
    """Walk every servo position of the actuator's profile; True when saved. Compartments are named
    as printed on the bin (hardware.compartment_names, else numbered from 1). With position
    feedback, each accepted position is also read, and each servo's readings at the ends of its
    span are saved (feedback_at_min / feedback_at_max): what arrival is checked against."""
    axes = list(actuator.axes) if actuator.profile == "flaps" else [getattr(actuator, "chute", None),
                                                                     getattr(actuator, "trapdoor", None)]
    axes = [a for a in axes if a is not None]
    feedback = bool(axes) and all(a.feedback is not None for a in axes)
    for a in axes:  # the old calibration is what is being replaced: arrival is not checked against it
        a.feedback_map = None
    readings: dict[str, list[tuple[float, float]]] = {a.name: [] for a in axes}

    def moved(axis, angle: float) -> None:
        actuator.move_to(axis, angle)
        if feedback:
            readings[axis.name].append((angle, float(axis.feedback.value)))

    try:
        return _calibrate(config_path, actuator, ask, say, moved, axes, feedback, readings, names)
    except ConfigError as e:
        say(f"not saved: {e}")
        return False


def _calibrate(config_path: Path, actuator, ask, say, moved, axes, feedback: bool,
               readings: dict[str, list[tuple[float, float]]], names: list[str] | tuple[str, ...] = ()) -> bool:
    import tomlkit

    from ecosorter.edge.machine import compartment_label

    try:
        doc = tomlkit.parse(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(config_path), "file not found (calibrate saves into it)") from None
    say(HELP)
    updates: dict[str, object] = {}
    if actuator.profile in ("chute", "pca9685"):
        angles = []
        for i, a in enumerate(actuator.angles):
            new = _adjust(f"compartment {compartment_label(i, names)}", a, lambda v: actuator.move_to(actuator.chute, v), ask, say,
                          actuator.chute.span)
            if new is None:
                return False
            moved(actuator.chute, new)  # where it was accepted: read there
            angles.append(new)
        for key, label, start in (("trapdoor_closed_angle", "trapdoor closed", actuator.door_closed),
                                  ("trapdoor_open_angle", "trapdoor open", actuator.door_open)):
            new = _adjust(label, start, lambda v: actuator.move_to(actuator.trapdoor, v), ask, say,
                          actuator.trapdoor.span)
            if new is None:
                return False
            moved(actuator.trapdoor, new)
            updates[key] = new
        updates["chute_angles"] = angles
        actuator.park()
    elif actuator.profile == "flaps":
        flap = actuator.flaps[0]
        for key, label, start in (("flap_closed_angle", "flaps closed", actuator.closed_angle),
                                  ("flap_open_angle", "flaps open", actuator.open_angle)):
            new = _adjust(label, start, lambda v: actuator.move_to(flap, v), ask, say, flap.span)
            if new is None:
                return False
            updates[key] = new
        if feedback:  # every flap has its own potentiometer: read each at both positions
            for f in actuator.flaps:
                moved(f, float(updates["flap_closed_angle"]))
                moved(f, float(updates["flap_open_angle"]))
        actuator.park()
    else:
        say(f"profile {actuator.profile!r} has no servos to calibrate")
        return False
    if feedback:
        fits = [_fit(a, readings[a.name]) for a in axes]
        updates["feedback_at_min"] = [lo for lo, _ in fits]
        updates["feedback_at_max"] = [hi for _, hi in fits]
        for a, fit in zip(axes, fits, strict=True):
            a.feedback_map = fit
            say(f"{a.name}: feedback {fit[0]:.3f} at {a.span[0]:g} deg, {fit[1]:.3f} at {a.span[1]:g} deg")
    table = doc.setdefault("hardware", tomlkit.table())
    for key, value in updates.items():
        table[key] = value
    config_path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    say(f"saved into {config_path}")
    return True
