"""A fresh week: benchmarks/week7d.toml (written by `python -m benchmarks.week7d`), judged on the
timeline like every scenario. Slow: about 3 minutes of wall time on a 2-core machine."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ecosorter.edge.simulate import load_scenario, run_scenario
from tests.scenarios.physics import assert_counts_match_drops, assert_physics, fault_windows, windows

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_scenario_file_is_what_its_generator_writes():
    from benchmarks.week7d import scenario

    assert (ROOT / "benchmarks" / "week7d.toml").read_text(encoding="utf-8") == scenario(), \
        "run: python -m benchmarks.week7d"


def test_a_week_with_jams_of_both_servos_a_slow_servo_with_feedback_button_resume_and_the_lid_in_every_phase():
    from benchmarks.week7d import JAMS, LID_HOURS

    r = run_scenario(load_scenario(ROOT / "benchmarks" / "week7d.toml"))
    t = r.timeline
    assert_physics(t, speed=150.0, first_jumps=True)  # the servos really run at 150 deg/s
    assert_counts_match_drops(t)  # every item landed where it was recorded
    it = r.summary["items"]
    assert it["placed"] == it["dropped_by_person"] == it["decided"] == 5000 and it["never_recorded"] == 0
    assert it["routed"] + it["not_routed"] == 5000
    assert Counter(x["item"] for x in r.of("item")).most_common(1)[0][1] == 1  # each recorded once
    # every jam raised (both servos) was cleared by the one button hold, and resumed by it too
    jams = r.of("fault", name="jam", state="raised")
    assert all(b != float("inf") for _, b in fault_windows(t))
    # a jam of a servo that is not asked to move before it is freed (the chute stuck at home while
    # the item goes to the home compartment) has nothing to see and misroutes nothing
    assert len(JAMS) - 1 <= len(jams) <= len(JAMS)
    seen = {x["detail"].split()[0] for x in jams}
    assert seen == {"chute", "trapdoor"}, [x["detail"] for x in jams]
    lids = windows(t, "lid", "open", "closed")
    assert len(lids) == 7 * len(LID_HOURS) + len(JAMS)
    resumes = r.of("hold", name="resume_button", state="cleared")
    assert len(resumes) == len(lids) and all(x["who"] == "button" for x in resumes)
    # the event log replaced by junk on day 4: set aside, a fresh log, one `log` fault (it stops
    # nothing: the invariants above held through it), cleared by the next jam's button hold
    damaged = r.of("fault", name="log", state="raised")
    assert len(damaged) == 1 and damaged[0]["t"] >= r.of("input", name="log")[0]["t"]
    assert any(x["t"] > damaged[0]["t"] for x in r.of("item")), "items sorted after the damage were recorded"
