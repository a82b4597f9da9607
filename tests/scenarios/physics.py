"""Assertions on a simulated timeline: what the pins were sent and what physically happened.

Nothing here asks the sorter what it thinks; every check reads servo commands, inputs and drops.
"""

from __future__ import annotations

from collections import Counter

EPS = 1e-6


def windows(timeline: list[dict], name: str, on: str, off: str) -> list[tuple[float, float]]:
    """[start, end) intervals in which an input was in state `on` (e.g. the lid open)."""
    out, start = [], None
    for r in timeline:
        if r["kind"] == "input" and r["name"] == name:
            if r["value"] == on and start is None:
                start = r["t"]
            elif r["value"] == off and start is not None:
                out.append((start, r["t"]))
                start = None
    if start is not None:
        out.append((start, float("inf")))
    return out


def fault_windows(timeline: list[dict]) -> list[tuple[float, float]]:
    out, open_ = [], {}
    for r in timeline:
        if r["kind"] == "fault":
            if r["state"] == "raised":
                open_[r["name"]] = r["t"]
            elif r["name"] in open_:
                out.append((open_.pop(r["name"]), r["t"]))
    out += [(t, float("inf")) for t in open_.values()]
    return out


def inside(t: float, spans: list[tuple[float, float]]) -> bool:
    return any(a - EPS <= t < b for a, b in spans)


def assert_no_motion_while_lid_open(timeline: list[dict]) -> None:
    open_spans = windows(timeline, "lid", "open", "closed")
    moves = [r for r in timeline if r["kind"] == "servo" and r["angle"] is not None and inside(r["t"], open_spans)]
    assert not moves, f"servo commanded while the lid was open: {moves[:3]}"


def servo_arrivals(timeline: list[dict], speed: float, span: float = 180.0, first_jumps: bool = False) -> list[dict]:
    """Each servo command with the time it had arrived: |delta| / speed after it was sent
    (a full span from an unknown position: power-up or after stopping mid-travel). first_jumps:
    the simulated servo's very first pulse puts it there at once (what position feedback reads)."""
    last: dict[str, float | None] = {}
    out = []
    for r in timeline:
        if r["kind"] != "servo":
            continue
        prev = last.get(r["name"])
        if r["angle"] is None:
            out.append({**r, "arrived": r["t"]})
        else:
            travel = (abs(r["angle"] - prev) if prev is not None else 0.0 if first_jumps and r["name"] not in last
                      else span) / speed
            out.append({**r, "arrived": r["t"] + travel})
        last[r["name"]] = r["angle"] if r["angle"] is not None else last.get(r["name"])
    return out


def assert_chute_waits_for_the_door(timeline: list[dict], speed: float, door_closed: float = -90.0,
                                    first_jumps: bool = False) -> None:
    """The chute is never commanded while the trapdoor is open or still travelling to closed."""
    door = None
    for r in servo_arrivals(timeline, speed, first_jumps=first_jumps):
        if r["name"] == "trapdoor" and r["angle"] is not None:
            door = r
        if r["name"] == "chute" and r["angle"] is not None:
            assert door is not None and door["angle"] == door_closed, f"chute sent with the door not closed: {r}"
            assert r["t"] >= door["arrived"] - EPS, f"chute sent at {r['t']} before the door arrived {door['arrived']}"


def assert_detach_after_arrival(timeline: list[dict], speed: float, first_jumps: bool = False) -> None:
    """Servos lose their pulses only after they arrived, unless the lid opened or a fault stopped them."""
    stops = windows(timeline, "lid", "open", "closed") + fault_windows(timeline)
    sent: dict[str, dict] = {}
    for r in servo_arrivals(timeline, speed, first_jumps=first_jumps):
        if r["angle"] is not None:
            sent[r["name"]] = r
        elif r["name"] in sent and not inside(r["t"], stops):
            assert r["t"] >= sent[r["name"]]["arrived"] - EPS, f"{r['name']} detached before arriving: {r}"


def assert_every_item_recorded_once(timeline: list[dict]) -> None:
    placed = [r["item"] for r in timeline if r["kind"] == "place"]
    recorded = Counter(r["item"] for r in timeline if r["kind"] == "item")
    assert all(n == 1 for n in recorded.values()), f"recorded twice: {[k for k, n in recorded.items() if n > 1]}"
    assert sorted(recorded) == sorted(placed), f"placed {sorted(placed)} != recorded {sorted(recorded)}"


def assert_counts_match_drops(timeline: list[dict]) -> None:
    routed = Counter(r["routed_to"] for r in timeline if r["kind"] == "item" and r["routed_to"] is not None)
    landed = Counter(r["compartment"] for r in timeline if r["kind"] == "drop")
    assert routed == landed, f"the sorter says {dict(routed)}, physics says {dict(landed)}"
    for r in timeline:
        if r["kind"] == "item" and r["routed_to"] is not None:
            drop = [d for d in timeline if d["kind"] == "drop" and d["item"] == r["item"]]
            assert drop and drop[0]["compartment"] == r["routed_to"], f"item {r['item']} went elsewhere: {r}, {drop}"


def assert_resumes_after_every_hold(timeline: list[dict]) -> None:
    """Every item that was waiting on the tray when a hold cleared was routed in the end (or was
    still there when the run stopped), and after the last hold clears the next item is routed."""
    cleared = [r["t"] for r in timeline if r["kind"] == "hold" and r["state"] == "cleared"]
    for i in (r for r in timeline if r["kind"] == "item"):
        waited = any(i["placed"] is not None and i["placed"] < t <= i["t"] for t in cleared)
        if waited:
            assert i["routed_to"] is not None or "at stop" in i["why"], f"waited through a hold, never routed: {i}"
    if cleared:
        later = [r for r in timeline if r["kind"] == "item" and r["t"] >= cleared[-1]]
        assert not later or later[0]["routed_to"] is not None or "at stop" in later[0]["why"], \
            f"nothing routed after the last hold: {later[0]}"


def assert_physics(timeline: list[dict], speed: float = 300.0, first_jumps: bool = False) -> None:
    assert_no_motion_while_lid_open(timeline)
    assert_chute_waits_for_the_door(timeline, speed, first_jumps=first_jumps)
    assert_detach_after_arrival(timeline, speed, first_jumps=first_jumps)
    assert_every_item_recorded_once(timeline)
    assert_resumes_after_every_hold(timeline)
