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


def calibrate(config_path: Path, actuator, ask: Callable[[str], str] = input,
              say: Callable[[str], None] = print, names: list[str] | tuple[str, ...] = ()) -> bool:
    """Walk every servo position of the actuator's profile; True when saved. Compartments are named
    as printed on the bin (hardware.compartment_names, else numbered from 1)."""
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
            angles.append(new)
        for key, label, start in (("trapdoor_closed_angle", "trapdoor closed", actuator.door_closed),
                                  ("trapdoor_open_angle", "trapdoor open", actuator.door_open)):
            new = _adjust(label, start, lambda v: actuator.move_to(actuator.trapdoor, v), ask, say,
                          actuator.trapdoor.span)
            if new is None:
                return False
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
        actuator.park()
    else:
        say(f"profile {actuator.profile!r} has no servos to calibrate")
        return False
    table = doc.setdefault("hardware", tomlkit.table())
    for key, value in updates.items():
        table[key] = value
    config_path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    say(f"saved into {config_path}")
    return True
