"""The bin as one machine in time: the real sorter against the simulated bin (`ecosorter simulate`).

Every assertion reads the timeline (what the pins were sent, what the inputs did, where items
physically fell), never the sorter's own opinion of what it did.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest

from ecosorter.edge.cli import main
from ecosorter.edge.simulate import ScenarioError, load_scenario, run_scenario
from tests.scenarios.physics import (
    assert_counts_match_drops,
    assert_no_motion_while_lid_open,
    assert_physics,
    windows,
)

HERE = Path(__file__).parent


def run(name: str, **config):
    sc = load_scenario(HERE / f"{name}.toml")
    for section, values in config.items():
        sc.config.setdefault(section, {}).update(values)
    return run_scenario(sc)


def first(result, kind: str, **match) -> dict:
    found = result.of(kind, **match)
    assert found, f"no {kind} {match} in the timeline"
    return found[0]


def items(result) -> list[dict]:
    return result.of("item")


def test_a_day_with_emptying():
    r = run("day")
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    placed = r.of("place")
    assert len(placed) == 150 and all(i["routed_to"] is not None for i in items(r))
    fulls = [h for h in r.of("hold") if h["name"].startswith("full")]
    assert any(h["state"] == "raised" for h in fulls) and all(
        any(c["name"] == h["name"] and c["state"] == "cleared" and c["t"] >= h["t"] for c in fulls)
        for h in fulls if h["state"] == "raised"), "every full compartment was emptied and its hold cleared"
    # what each compartment physically received equals the count the bin reports for it
    assert r.summary["compartments"]["landed"] == {k: v for k, v in r.summary["compartments"]["routed"].items() if v}


def test_jam_is_seen_by_the_switches_and_cleared_by_a_person():
    r = run("jam")
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    raised = first(r, "fault", name="jam", state="raised")
    cleared = first(r, "fault", name="jam", state="cleared")
    assert cleared["who"] == "button" and cleared["t"] >= 125.0 + 3.0  # held 3 s, not sooner
    door_opens = [s for s in r.of("servo", name="trapdoor") if s["angle"] == 0.0]
    assert not [s for s in door_opens if raised["t"] <= s["t"] < cleared["t"]], "the door opened during the jam"
    waited = first(r, "item", item=2)
    assert waited["routed_to"] is not None and waited["t"] > cleared["t"]  # it waited on the tray, then went in
    assert first(r, "item", item=3)["routed_to"] is not None  # and the bin sorts on


def test_a_jam_without_switches_goes_unseen():
    """Open-loop servos cannot report a jam: the README says so, and this is what it means."""
    r = run("jam", hardware={"chute_home_switch_pin": -1, "trapdoor_closed_switch_pin": -1})
    assert not r.of("fault")
    wrong = [i for i in items(r) for d in r.of("drop", item=i["item"]) if d["compartment"] != i["routed_to"]]
    assert wrong, "with the chute stuck at home the item fell into the home compartment, unnoticed"
    with pytest.raises(AssertionError):
        assert_counts_match_drops(r.timeline)


def test_lid_opened_mid_move_stops_everything_then_resumes():
    r = run("lid_mid_move")
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    opened, closed = windows(r.timeline, "lid", "open", "closed")[0]
    during = [s for s in r.of("servo") if opened <= s["t"] < closed]
    assert during and all(s["angle"] is None for s in during)  # detached at once, nothing after
    resume = first(r, "hold", name="resume", state="cleared")["t"]
    assert resume == pytest.approx(closed + 2.0)
    after = [s for s in r.of("servo") if s["t"] >= closed and s["angle"] is not None]
    assert after[0]["t"] >= resume  # nothing moves before the resume delay
    assert after[0]["name"] == "trapdoor"  # homing starts with the door: the chute's position is unknown
    assert first(r, "item", item=1)["routed_to"] is not None and first(r, "item", item=2)["routed_to"] is not None


@pytest.mark.parametrize("when_full", ["fallback", "pause"])
def test_full_compartment(when_full):
    r = run("full", hardware={"when_full": when_full})
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    full = first(r, "hold", state="raised")
    c = int(full["name"][4:])
    fallback = 3
    assert c != fallback, "the repeated photo must be confidently not-khusus for this scenario"
    bound_for_c = [i for i in items(r) if i["compartment"] == c]
    after_full = [i for i in bound_for_c if i["t"] > full["t"]]
    assert after_full
    if when_full == "fallback":
        before_empty = [i for i in after_full if i["t"] < 120.0]
        assert before_empty and all(i["routed_to"] == fallback for i in before_empty)
    else:
        assert all(i["routed_to"] == c and i["t"] >= 120.0 for i in after_full)  # waited for the emptying
    assert all(i["routed_to"] is not None for i in items(r))


def test_camera_unplugged_and_replugged():
    r = run("camera")
    assert_physics(r.timeline)
    down = first(r, "hold", name="camera", state="raised")
    up = first(r, "hold", name="camera", state="cleared")
    assert down["t"] == pytest.approx(20.0, abs=0.6) and up["t"] == pytest.approx(620.0, abs=0.6)
    second = first(r, "item", item=2)  # put down while the camera was out: sorted once it is back
    assert second["routed_to"] is not None and second["t"] >= up["t"]
    assert len(items(r)) == 3


def test_power_fail_parks_and_holds_until_power_returns():
    r = run("power")
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    fail = first(r, "hold", name="power", state="raised")["t"]
    back = first(r, "hold", name="power", state="cleared")["t"]
    parked = [s for s in r.of("servo") if fail <= s["t"] < back]
    assert [(s["name"], s["angle"]) for s in parked if s["angle"] is not None] == [("trapdoor", -90.0), ("chute", 0.0)]
    assert parked[-1]["angle"] is None  # and then detached
    waited = first(r, "item", item=2)
    assert waited["routed_to"] is not None and waited["t"] > back


def test_sigterm_with_an_item_waiting_records_it_and_moves_nothing():
    r = run("sigterm")
    assert_physics(r.timeline)
    signal_t = first(r, "input", name="signal")["t"]
    held = first(r, "item", item=2)
    assert held["routed_to"] is None and "still on the tray at stop" in held["why"]
    assert Counter(i["item"] for i in items(r)) == {1: 1, 2: 1}
    assert all(s["angle"] is None for s in r.of("servo") if s["t"] >= signal_t)  # lid open: detach only
    assert r.timeline[-1]["kind"] == "exit" and r.timeline[-1]["code"] == 0


def test_sigterm_with_the_lid_closed_parks_door_first():
    sc = load_scenario(HERE / "power.toml")
    sc.events = [e for e in sc.events if e.kind == "drop"][:1]
    sc.bin.until = 30.0
    r = run_scenario(sc)
    assert_no_motion_while_lid_open(r.timeline)
    end = first(r, "item", item=1)["t"]
    tail = [s for s in r.of("servo") if s["t"] > end]
    assert [(s["name"], s["angle"]) for s in tail if s["angle"] is not None] == [("trapdoor", -90.0), ("chute", 0.0)]


def test_resume_only_after_the_button_when_configured():
    r = run("resume_button")
    assert_physics(r.timeline)
    closed = windows(r.timeline, "lid", "open", "closed")[0][1]
    press = first(r, "input", name="button")["t"]
    moves = [s for s in r.of("servo") if s["t"] >= closed and s["angle"] is not None]
    assert moves and moves[0]["t"] >= press  # closing the lid alone did not restart motion
    assert first(r, "hold", name="resume_button", state="cleared")["who"] == "button"
    assert first(r, "item", item=1)["routed_to"] is not None


def test_bad_scenarios_are_clear_errors_naming_the_line(tmp_path, capsys):
    photo = HERE.parent.parent / "edge" / "demo" / "samples" / "02-kardus-trashnet-cardboard105.jpg"
    cases = {
        # each error names the bad key's own line, not its [[events]] header (#18.7)
        "unknown key": ('[[events]]\nat = 1.0\nlidd = "open"\n', r":3: unknown event key 'lidd'; did you mean 'lid'"),
        "missing photo": ('[[events]]\nat = 1.0\ndrop = "nope.jpg"\n', r":3: drop = 'nope.jpg': no such photo"),
        "backwards": (f'[[events]]\nat = 5.0\ndrop = "{photo}"\n\n[[events]]\nat = 2.0\nlid = "open"\n',
                      r":6: at = 2 comes before the previous event's 5"),
        "no pin": ('[[events]]\nat = 1.0\nlid = "open"\n', r":3: lid needs hardware.interlock_pin"),
        "bad value": ('[[events]]\nat = 1.0\ncamera = "melt"\n', r":3: camera = 'melt': allowed"),
        "two kinds": ('[[events]]\nat = 1.0\nlid = "open"\nempty = 2\n', r":4: an event has exactly one of"),
        "bin key": ('[bin]\nspeed = 3\n', r":2: \[bin\] unknown key 'speed'"),
        "bin key after events": ('[[events]]\nat = 1.0\ncamera = "ok"\n# fps = 3\n[bin]\n\nfps = -3\n',
                                 r":7: \[bin\] fps: -3.0 is below"),
        "bad at": ('[[events]]\n# a comment\nat = "soon"\ncamera = "ok"\n', r":3: at: must be float"),
        "negative hold": ('[config.hardware]\nwrong_button_pin = 27\n\n[[events]]\nat = 1.0\npress = "clear"\n'
                          'hold_s = -1\n', r":7: hold_s = -1: a press lasts more than 0"),
        "config key": ('[config.hardware]\nprofile = "chute"\n\ninterlock_pin = 40\n',
                       r":4: \[config\] config hardware.interlock_pin: -?40 is above the maximum 27"),
        "items key": ('[items]\nfolder = "."\n\nevery_s = 0\ncount = 3\n', r":4: \[items\] every_s must be > 0"),
        "config rule": ('[config.hardware]\ninterlock_resume = "button"\n',
                        r":2: \[config\] config hardware.interlock_resume: 'button' needs"),
    }
    for name, (text, pattern) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.toml"
        path.write_text(text)
        with pytest.raises(ScenarioError, match=pattern):
            run_scenario(path)
        assert main(["simulate", str(path)]) == 2, name
        assert str(path) in capsys.readouterr().err


def test_cli_timeline_is_json_lines_in_time_order(tmp_path, capsys):
    import json

    out = tmp_path / "t.jsonl"
    assert main(["simulate", str(HERE / "lid_mid_move.toml"), "--timeline", str(out), "--json"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
    assert {r["kind"] for r in rows} >= {"servo", "input", "item", "hold", "drop", "exit"}
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"]["placed"] == 2 and summary["items"]["routed"] == 2


def test_same_scenario_same_timeline():
    a, b = run("lid_mid_move"), run("lid_mid_move")
    strip = [{k: v for k, v in r.items()} for r in a.timeline]
    assert strip == b.timeline


def test_scenario_config_is_a_copy(tmp_path):
    sc = load_scenario(HERE / "jam.toml")
    before = copy.deepcopy(sc.config)
    run_scenario(sc)
    assert sc.config == before


def test_24_hours_2000_items():
    """benchmarks/day24h.toml: the day the note reports (wall time there, never asserted here)."""
    r = run_scenario(HERE.parent.parent / "benchmarks" / "day24h.toml")
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    it = r.summary["items"]
    assert it["placed"] == it["decided"] == it["routed"] == 2000 and it["never_recorded"] == 0
    assert r.summary["faults"] == {"jam": 1} and r.summary["holds"]["camera"] == 1 and r.summary["holds"]["full"] > 0
    assert r.summary["virtual_s"] >= 24 * 3600


def test_machine_log_and_safe_with_a_broken_config(tmp_path, capsys):
    """Every raise and clear is in the event database; `ecosorter safe` survives a bad edit."""
    import sqlite3

    from ecosorter.edge.config import load_config
    from ecosorter.edge.simulate.pins import ClockedMockFactory
    from ecosorter.edge.sorter import build_sorter

    pins = ClockedMockFactory()
    cfg = load_config(overrides={"hardware.profile": "chute", "hardware.interlock_pin": 17, "hardware.settle_s": 0.0,
                                 "hardware.servo_speed_deg_s": 3000.0, "camera.source": "folder",
                                 "camera.device": str(HERE)})
    with build_sorter(cfg, pin_factory=pins, state_dir=tmp_path) as sorter:
        pins.pin(17).drive_high()  # lid open
        sorter.tick()
        pins.pin(17).drive_low()
        sorter.tick()
        sorter.machine.raise_("jam", "test")
        sorter.clear_fault("page")
    rows = sqlite3.connect(tmp_path / "events.db").execute(
        "SELECT name, state, who FROM machine_log ORDER BY seq").fetchall()
    assert rows[:3] == [("lid", "raised", ""), ("lid", "cleared", ""), ("resume", "raised", "")]
    assert ("jam", "cleared", "page") in rows
    broken = tmp_path / "config.toml"
    broken.write_text('[hardware]\nprofile = "chute"\nsettle = 0.3\n')  # a typo after the bin last started
    assert main(["safe", "--config", str(broken), "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "hardware safe (chute) from" in out.out and "last-good-hardware.json" in out.out
    assert "hardware.settle: unknown key" in out.err
    assert main(["safe", "--config", str(broken), "--state-dir", str(tmp_path / "nothing")]) == 2
    assert main(["safe", "--config", str(tmp_path / "deleted.toml"), "--state-dir", str(tmp_path)]) == 0
    assert "hardware safe (chute) from" in capsys.readouterr().out  # a missing file: the kept config too
    own = tmp_path / "own.toml"  # no --state-dir: the folder the broken config itself names
    own.write_text(f'[record]\nstate_dir = "{tmp_path}"\n[hardware]\nprofile = "chute"\nsettle = 0.3\n')
    assert main(["safe", "--config", str(own)]) == 0
    assert str(tmp_path / "last-good-hardware.json") in capsys.readouterr().out
    stuck = tmp_path / "stuck.toml"  # switches that never confirm: safe must not say "safe"
    stuck.write_text('[hardware]\nprofile = "chute"\npin_factory = "mock"\nservo_speed_deg_s = 3000.0\n'
                     "chute_home_switch_pin = 20\ntrapdoor_closed_switch_pin = 21\n")
    assert main(["safe", "--config", str(stuck)]) == 1
    assert "NOT safe (chute): Jammed: trapdoor did not reach -90 deg" in capsys.readouterr().err


def test_a_servo_slower_than_configured_misroutes_unseen(tmp_path):
    """The config's servo speed is a promise the bin cannot check without switches: physics can."""
    sc = load_scenario(HERE / "lid_mid_move.toml")
    sc.events = [e for e in sc.events if e.kind == "drop"]
    sc.bin.servo_speed_deg_s = 40.0  # the config says 300
    r = run_scenario(sc)
    assert not r.of("fault")
    with pytest.raises(AssertionError, match="went elsewhere|physics says"):
        assert_counts_match_drops(r.timeline)


def _lid_at(offset: float):
    """The lid_mid_move scenario with its lid opened `offset` s after item 1's trapdoor was sent open."""
    base = load_scenario(HERE / "lid_mid_move.toml")
    base.events = [e for e in base.events if e.kind == "drop"]
    t_open = first(run_scenario(base), "servo", name="trapdoor", angle=0.0)["t"]
    sc = load_scenario(HERE / "lid_mid_move.toml")
    sc.events = [e if e.kind != "lid" or e.value != "open" else
                 type(e)(t_open + offset, "lid", "open", e.line) for e in sc.events]
    sc.events.sort(key=lambda e: e.at)
    return run_scenario(sc)


@pytest.mark.parametrize("offset,fell", [(0.05, False), (0.25, True), (0.9, True)])
def test_lid_opened_while_the_door_opens_or_the_item_drops(offset, fell):
    """Before the door is half open the item is still on it (it waits, then goes in); after, it has
    fallen and is recorded as routed; and a door left open is shut before the next item comes."""
    r = _lid_at(offset)
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    one = first(r, "item", item=1)
    lid_open = first(r, "input", name="lid", value="open")["t"]
    assert one["routed_to"] is not None
    assert (one["t"] < lid_open + 1.0) is fell  # recorded at the stop (fell) or only after the resume
    closed = first(r, "input", name="lid", value="closed")["t"]
    shut = [s for s in r.of("servo", name="trapdoor", angle=-90.0) if s["t"] >= closed]
    assert shut and shut[0]["t"] < first(r, "place", item=2)["t"]  # parked before the next item is put down


def test_an_item_swapped_while_the_camera_was_frozen_is_still_seen():
    r = run("freeze")
    assert_physics(r.timeline)
    assert r.summary["items"]["never_recorded"] == 0
    assert all(i["routed_to"] is not None for i in items(r)) and len(items(r)) == 2


def test_a_trapdoor_jammed_shut_drops_nothing_and_the_bin_goes_on_after_the_clear():
    """#18.1: the item counts as dropped only once the closed-switch has opened; it waits on the
    tray through the jam and is sorted after the clear, and the next item is taken too."""
    r = run("jam_door_closed")
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    raised = first(r, "fault", name="jam", state="raised")
    cleared = first(r, "fault", name="jam", state="cleared")
    one = first(r, "item", item=1)
    assert one["t"] > cleared["t"] and one["routed_to"] is not None, "recorded only once it really went in"
    assert first(r, "drop", item=1)["t"] > cleared["t"] > raised["t"]
    assert first(r, "item", item=2)["routed_to"] is not None
    assert r.summary["items"]["never_recorded"] == 0


def test_button_resume_one_hold_clears_the_jam_and_resumes():
    """#18.3: with interlock_resume = "button", the 3 s clear hold after the lid is shut also
    resumes: one action, not a second press nobody is told about."""
    r = run("jam_resume_button")
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    jam = first(r, "fault", name="jam", state="cleared")
    resume = first(r, "hold", name="resume_button", state="cleared")
    assert jam["who"] == resume["who"] == "button" and resume["t"] == pytest.approx(jam["t"])
    assert len(r.of("input", name="button")) == 1
    assert all(i["routed_to"] is not None for i in items(r)) and len(items(r)) == 2


def test_a_latched_fault_moves_nothing_on_power_fail_or_exit():
    """#18.4: with a jam latched, the power-fail park and the exit park detach only."""
    r = run("fault_park")
    assert_physics(r.timeline)
    jam = first(r, "fault", name="jam", state="raised")
    assert not r.of("fault", name="jam", state="cleared")
    moved = [s for s in r.of("servo") if s["t"] > jam["t"] and s["angle"] is not None]
    assert not moved, f"servos driven with the jam latched: {moved}"
    assert first(r, "hold", name="power", state="raised")
    held = first(r, "item", item=1)
    assert held["routed_to"] is None and "at stop" in held["why"]


def test_the_timeline_streams_to_its_file_and_is_not_held(tmp_path):
    """#18.7: a week in memory grew ~8 MB per simulated day. With keep=False nothing is held (no
    timeline, no per-pin history); the file has exactly what an in-memory run records."""
    import json

    import ecosorter.edge.simulate.pins as sim_pins

    made = []
    real = sim_pins.ClockedMockFactory.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        made.append(self)

    sim_pins.ClockedMockFactory.__init__ = spy
    try:
        held = run("jam")
        streamed = run_scenario(load_scenario(HERE / "jam.toml"), timeline_path=tmp_path / "t.jsonl", keep=False)
    finally:
        sim_pins.ClockedMockFactory.__init__ = real
    assert streamed.timeline == []
    assert all(len(p.timeline) <= 1 and len(p.states) <= 1 for p in made[-1].pins.values())
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert rows == [{**r, "t": round(r["t"], 6)} for r in held.timeline]
    assert streamed.summary["faults"] == held.summary["faults"] == {"jam": 1}
    assert streamed.summary["items"] == held.summary["items"]


def test_an_item_put_down_after_sigterm_is_recorded_on_the_tray_at_stop():
    """#18.6: the signal came, the bin parked on its way out, an item was put down meanwhile."""
    r = run("sigterm_late")
    assert_physics(r.timeline)
    signal_t = first(r, "input", name="signal")["t"]
    late = first(r, "item", item=2)
    assert first(r, "place", item=2)["t"] > signal_t
    assert late["routed_to"] is None and "still on the tray at stop" in late["why"]
    assert Counter(i["item"] for i in items(r)) == {1: 1, 2: 1}
    assert r.summary["items"]["never_recorded"] == 0
    tail = [(s["name"], s["angle"]) for s in r.of("servo") if s["t"] >= signal_t and s["angle"] is not None]
    assert tail == [("trapdoor", -90.0), ("chute", 0.0)]  # parked once, door first


BUTTON = {"interlock_pin": 17, "wrong_button_pin": 27, "interlock_resume": "button", "chute_home_switch_pin": 20,
          "trapdoor_closed_switch_pin": 21}
KARDUS = HERE.parent.parent / "edge" / "demo" / "samples" / "02-kardus-trashnet-cardboard105.jpg"
LOGAM = HERE.parent.parent / "edge" / "demo" / "samples" / "05-logam-trashnet-metal120.jpg"
PLASTIK = HERE.parent.parent / "edge" / "demo" / "samples" / "06-plastik-trashnet-plastic108.jpg"


def _door_open_at() -> float:
    """When the trapdoor is sent open for item 1 (put down at 5 s) on the button-resume chute."""
    sc = load_scenario(HERE / "lid_mid_move.toml")
    sc.events = [e for e in sc.events if e.kind == "drop"][:1]
    sc.config["hardware"].update(BUTTON)
    return first(run_scenario(sc), "servo", name="trapdoor", angle=0.0)["t"]


def _events(*evs):
    from ecosorter.edge.simulate.scenario import SimEvent

    return [SimEvent(at, kind, value, 0, hold) for at, kind, value, hold in sorted(evs, key=lambda e: e[0])]


def test_the_door_left_open_is_shut_once_the_lid_closes_and_what_fell_through_is_recorded():
    """#18.5: the lid opens with the door open (the item has dropped); with button resume the door
    stayed open until the press, and an item put down meanwhile fell through unrecorded. Now: it is
    recorded once with where it went, and the door shuts as soon as the lid closes, before any press."""
    t = _door_open_at()
    sc = load_scenario(HERE / "lid_mid_move.toml")
    sc.config["hardware"].update(BUTTON)
    sc.events = _events((5.0, "drop", KARDUS, None), (t + 0.9, "lid", "open", None),
                        (t + 5.0, "drop", LOGAM, None),  # the person waits 10 s for the door, then puts it down
                        (t + 30.0, "lid", "closed", None), (t + 60.0, "press", "wrong", 0.3),
                        (t + 80.0, "drop", PLASTIK, None))
    r = run_scenario(sc)
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    fell = first(r, "item", item=2)
    assert fell["routed_to"] == first(r, "drop", item=2)["compartment"] == first(r, "item", item=1)["routed_to"]
    assert "fell through" in fell["why"]
    closed = first(r, "input", name="lid", value="closed")["t"]
    press = first(r, "input", name="button")["t"]
    shut = [s for s in r.of("servo", name="trapdoor", angle=-90.0) if s["t"] >= closed]
    assert shut and shut[0]["t"] < press, "the door waited for the resume press"
    assert first(r, "item", item=3)["routed_to"] is not None and r.summary["items"]["never_recorded"] == 0


def test_items_through_a_trapdoor_jammed_open_are_recorded_with_where_they_went():
    """#18.5: the trapdoor jams open mid-drop: a jam, nothing moves; items put down meanwhile fall
    into the compartment under the chute, each recorded once with it; after the clear it sorts on."""
    t = _door_open_at()
    sc = load_scenario(HERE / "lid_mid_move.toml")
    sc.config["hardware"].update(BUTTON)
    sc.events = _events((5.0, "drop", KARDUS, None), (t + 0.5, "jam", "trapdoor", None),
                        (t + 3.0, "drop", LOGAM, None), (t + 20.0, "drop", PLASTIK, None),
                        (t + 50.0, "lid", "open", None), (t + 55.0, "unjam", "trapdoor", None),
                        (t + 60.0, "lid", "closed", None), (t + 70.0, "press", "clear", 3.5),
                        (t + 100.0, "drop", KARDUS, None))
    r = run_scenario(sc)
    assert_physics(r.timeline)
    assert_counts_match_drops(r.timeline)
    assert first(r, "fault", name="jam", state="raised")
    under = first(r, "item", item=1)["routed_to"]
    for n in (2, 3):
        i = first(r, "item", item=n)
        assert i["routed_to"] == under and "fell through" in i["why"], i
    assert Counter(i["item"] for i in items(r)) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert first(r, "item", item=4)["routed_to"] is not None


FEEDBACK = {"feedback_adc": "mcp3008", "feedback_channels": [0, 1], "feedback_at_min": [0.1, 0.12],
            "feedback_at_max": [0.9, 0.88]}


def _slow(speed: float, **hardware):
    sc = load_scenario(HERE / "lid_mid_move.toml")
    sc.events = [e for e in sc.events if e.kind == "drop"]
    sc.bin.servo_speed_deg_s = speed  # the config says 300
    sc.config["hardware"].update(hardware)
    return run_scenario(sc)


def test_position_feedback_stops_the_misroute_of_a_stalling_servo():
    """#18.2: at 40 deg/s against a configured 300 the door opened with the chute between
    compartments (test_a_servo_slower_than_configured_misroutes_unseen). With the servos'
    feedback read through an MCP3008, the chute is checked before the door opens: a jam, and the
    item stays on the tray; nothing lands anywhere it was not recorded."""
    from tests.scenarios.physics import assert_every_item_recorded_once

    r = _slow(40.0, **FEEDBACK)
    assert_every_item_recorded_once(r.timeline)
    assert_counts_match_drops(r.timeline)
    assert first(r, "fault", name="jam", state="raised")
    assert not r.of("servo", name="trapdoor", angle=0.0), "the door opened with the chute short of its compartment"
    assert not r.of("drop")
    assert "held by jam" in first(r, "item", item=1)["why"]


def test_position_feedback_waits_for_a_slow_servo_within_its_budget():
    """A servo at 150 deg/s against a configured 300 arrives late: with feedback the door waits
    for it (no fault, every item where it was recorded)."""
    r = _slow(150.0, **FEEDBACK)
    assert_counts_match_drops(r.timeline)
    assert not r.of("fault") and all(i["routed_to"] is not None for i in items(r)) and len(items(r)) == 2
    chute = r.of("servo", name="chute")
    door = r.of("servo", name="trapdoor", angle=0.0)
    moved = [s for s in chute if s["angle"] not in (None, 0.0)][0]
    assert door[0]["t"] - moved["t"] >= abs(moved["angle"]) / 150.0  # opened only once it had got there
