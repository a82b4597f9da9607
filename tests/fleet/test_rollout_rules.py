"""The soak's verdict on one bin, from its own retained states (before, first on the new model, now),
and the rollout command's refusals before anything is sent."""

from __future__ import annotations

import subprocess

import pytest

from ecosorter.fleet.broker import FleetError
from ecosorter.fleet.rollout import Params, judge, open_db, parse_duration
from tests.fleet.conftest import ECOSORTER, versioned_model

P = Params(min_items=10, max_uncertain_rise=0.15, max_wrong_rise=0.10)


def state(items: int, uncertain: int, wrong: int = 0, faults: tuple[str, ...] = (), drift: bool = False) -> dict:
    # the drift watch's alarm is a hold on the machine (edge/decide's drift watch)
    holds = [{"name": "model_drift", "reason_en": "drift"}] if drift else []
    return {"totals": {"counts": {"kaca": items}, "uncertain": uncertain}, "items_today": items, "wrong_today": wrong,
            "uncertain_share": uncertain / items if items else None,
            "machine": {"faults": [{"name": f, "reason_en": f"{f} words"} for f in faults], "holds": holds}}


BEFORE = state(100, 10, 1)  # its own figures before: 10 % uncertain, 1 % wrong


@pytest.mark.parametrize(("now", "verdict", "why"), [
    (state(105, 10), "wait", "5/10 items"),
    (state(120, 12), "pass", "20 items, uncertain 10% (was 10%)"),
    (state(120, 15), "pass", "uncertain 25%"),  # 25 % <= 10 % + 15 %
    (state(120, 16), "fail", "uncertain share 30% of 20 items on the new model vs 10% before"),
    (state(120, 10, wrong=4), "fail", "'wrong' rate 15% of 20 items vs 1% before"),
    (state(120, 10, faults=("jam",)), "fail", "fault jam: jam words"),
    (state(120, 10, drift=True), "fail", "drift"),
    (state(3, 0), "wait", "bin restarted"),
])
def test_verdict(now, verdict, why):
    v, text = judge(BEFORE, state(100, 10, 1), now, P)
    assert v == verdict and why in text


def test_a_bin_with_no_figure_before_is_judged_against_a_ceiling():
    assert judge({}, state(0, 0), state(20, 9), P)[0] == "pass"  # 45 % <= 35 % + 15 %
    assert judge({}, state(0, 0), state(20, 11), P)[0] == "fail"


def test_a_fault_present_before_the_install_is_not_the_new_model():
    assert judge(BEFORE, state(100, 10, faults=("jam",)), state(120, 12, faults=("jam",)), P)[0] == "pass"


def test_durations():
    assert parse_duration("90") == 90 and parse_duration("15m") == 900 and parse_duration("2h") == 7200
    with pytest.raises(FleetError, match="--soak '10 minutes'"):
        parse_duration("10 minutes")


def test_rollout_refuses_before_sending_anything(tmp_path):
    model = versioned_model(tmp_path / "v5.tflite", 5)
    (tmp_path / "k").write_text("x")
    (tmp_path / "k").chmod(0o600)
    base = [*ECOSORTER, "fleet", "rollout", "--db", str(tmp_path / "f.db"), "--broker", "127.0.0.1:1"]
    r = subprocess.run([*base, str(model)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "needs --key" in r.stderr
    r = subprocess.run([*base, str(model), "--key", str(tmp_path / "k"), "--version", "4"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "--version 4:" in r.stderr and "says version 5" in r.stderr
    (tmp_path / "not.tflite").write_bytes(b"nope")
    r = subprocess.run([*base, str(tmp_path / "not.tflite"), "--key", str(tmp_path / "k")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "not.tflite" in r.stderr
    r = subprocess.run([*base, "--status"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "no rollout yet" in r.stdout
    assert open_db(tmp_path / "f.db").execute("SELECT COUNT(*) FROM rollouts").fetchone()[0] == 0
