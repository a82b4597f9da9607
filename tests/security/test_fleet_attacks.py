"""A hostile party on the broker, as `ecosorter fleet` sees it: retained states and results that are not
what a bin sends (wrong types, NaN, terminal escapes). Real Mosquitto, the real fleet tool."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ecosorter.fleet.broker import Broker
from ecosorter.fleet.rollout import Params, judge
from ecosorter.fleet.view import FleetView

pytestmark = pytest.mark.broker
ECOSORTER = [sys.executable, "-m", "ecosorter.edge.cli"]

# each would end `fleet status` (and a rollout's judge or rollback) with a traceback before
HOSTILE = {
    "b-model-str": {"model": "x"},
    "b-machine-str": {"machine": "x"},
    "b-holds-str": {"machine": {"holds": ["x"], "faults": [7]}},
    "b-fill-ints": {"compartments": [1, 2]},
    "b-counts-str": {"today": {"counts": {"kaca": "x"}}, "totals": {"counts": {"kaca": "x"}, "uncertain": "y"}},
    "b-last-str": {"last": "x", "at": 5},
    "b-sha-list": {"model": {"sha256": ["x"], "version": "9"}},
    "b-nan": {"uncertain_share": float("nan"), "items_today": 50, "model": {"sha256": "ab" * 32}},
    "b-escape": {"model": {"sha256": "\x1b]0;owned\x07" + "cd" * 32},
                 "machine": {"faults": [{"name": "jam\x1b[2J", "kind": "fault", "reason_en": "\x1b[31mred"}]}},
}


def publish(port: int, states: dict) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for b, s in states.items():
        c.publish(f"ecosorter/{b}/state", json.dumps(s), qos=1, retain=True).wait_for_publish(5)
    c.publish("ecosorter/b-deep/state", b"[" * 100_000, qos=1, retain=True).wait_for_publish(5)  # RecursionError
    c.publish("ecosorter/good/state", json.dumps({"model": {"sha256": "ef" * 32, "version": 3}, "items_today": 4}),
              qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_hostile_retained_states_do_not_end_fleet_status_nor_reach_the_terminal(mosquitto, as_json):
    publish(mosquitto.port, HOSTILE)
    r = subprocess.run([*ECOSORTER, "fleet", "status", "--broker", f"127.0.0.1:{mosquitto.port}",
                        *(["--json"] if as_json else [])], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "Traceback" not in r.stderr
    if as_json:
        rows = {b["bin_id"]: b for b in json.loads(r.stdout)["bins"]}
        assert rows["good"]["model_sha256"] == "ef" * 32 and rows["good"]["model_version"] == 3
        assert rows["b-model-str"]["model_sha256"] is None and rows["b-sha-list"]["model_version"] is None
        assert rows["b-nan"]["uncertain_share"] is None  # not NaN: `json.loads` of the output must not need it
        assert set(rows) == {*HOSTILE, "good", "b-deep"}
    else:
        assert "good" in r.stdout and "v3 efefefefefef" in r.stdout and "11 bins" in r.stdout


def test_a_rollout_can_judge_and_roll_back_past_a_hostile_bin(mosquitto):
    """The rollout reads the same view: its judge and its rollback's model check must not raise on any
    bin's state, or one bin would stop the rollback of every other."""
    publish(mosquitto.port, HOSTILE)
    view = FleetView(Broker(port=mosquitto.port)).start()
    try:
        for b in HOSTILE:
            seen = view.get(b)
            assert seen is not None, b
            assert isinstance(seen.model_sha, str)
            verdict, why = judge(seen.state, seen.state, seen.state, Params(min_items=1))
            assert verdict in ("wait", "pass", "fail") and "\x1b" not in why
        assert view.get("b-escape").model_sha == "?]0;owned?" + "cd" * 32  # printable, never the escape
    finally:
        view.close()


class LyingBin:
    """A bin on the broker that answers every signed command `ok` and never changes its state: it says
    it installed the model but keeps reporting the old one (as a bin whose live swap refused it does)."""

    def __init__(self, port: int, bin_id: str, model_sha: str):
        import paho.mqtt.client as mqtt

        self.bin_id, self.commands = bin_id, []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"ecosorter/{bin_id}/cmd", qos=1)
        c.on_message = self._on_command
        c.connect("127.0.0.1", port)
        c.loop_start()
        state = {"model": {"sha256": model_sha, "version": 1}, "items_today": 500, "uncertain_share": 0.05,
                 "totals": {"counts": {"kaca": 500}, "uncertain": 25}, "wrong_today": 0,
                 "machine": {"state": "ready", "holds": [], "faults": []}}
        c.publish(f"ecosorter/{bin_id}/availability", "online", qos=1, retain=True).wait_for_publish(5)
        c.publish(f"ecosorter/{bin_id}/state", json.dumps(state), qos=1, retain=True).wait_for_publish(5)
        self.client = c

    def _on_command(self, cl, u, m) -> None:
        if not m.payload:
            return
        cmd = json.loads(m.payload)
        self.commands.append(cmd["action"])
        cl.publish(f"ecosorter/{self.bin_id}/cmd/result", json.dumps(
            {"action": cmd["action"], "ok": True, "nonce": cmd["nonce"], "self_test": "kaca 1.00",
             "model": "sha-" + "0" * 64 + ".tflite"}), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_canary_that_says_installed_but_never_runs_the_model_does_not_let_it_spread(mosquitto, tmp_path):
    import threading

    from ecosorter.edge.security import new_keypair
    from ecosorter.fleet.rollout import DONE, Rollout, open_db

    model = tmp_path / "m.tflite"
    model.write_bytes(b"a model the bins would fetch")
    old = "11" * 32
    canary, rest = LyingBin(mosquitto.port, "a-canary", old), LyingBin(mosquitto.port, "b-rest", old)
    broker = Broker(port=mosquitto.port)
    db = open_db(tmp_path / "rollouts.db")
    view = FleetView(broker).start()
    try:
        rid = Rollout.create(db, view, model, Params(canary=1, soak_s=1.0, min_items=1, resend_s=30),
                             "https://models.example.org/m.tflite", "", 2)
    finally:
        view.close()
    stop = threading.Event()
    ro = Rollout(db, rid, broker, new_keypair()[0], say=lambda s: None, poll_s=0.1)
    timer = threading.Timer(30, stop.set)  # a limit for a hung test: the soak is 1 s, a wave passes by 3 s
    timer.start()
    out = [ro.run(stop)]
    timer.cancel()
    canary.close()
    rest.close()
    assert canary.commands[:1] == ["install_model"]
    assert "install_model" not in rest.commands, "the model spread past a canary that never ran it"
    assert out and out[0] != DONE
    reason = db.execute("SELECT reason FROM rollouts WHERE id = ?", (rid,)).fetchone()[0]
    assert "a-canary" in reason and old[:12] in reason
