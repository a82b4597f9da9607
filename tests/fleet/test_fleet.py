"""Done-when of issue 19, with a real Mosquitto and six bins as separate `ecosorter run` processes.

The tests share one fleet (starting six bins costs most of the time) and run in file order:
status, then a bad rollout, then a good one.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess

import pytest

from tests.fleet.conftest import BINS, ECOSORTER, sha, uncertain_model, versioned_model, wait

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]


def rollout_args(fleet, model, *extra: str) -> list[str]:
    return [*ECOSORTER, "fleet", "rollout", *([str(model)] if model else []), "--key", str(fleet.root / "owner.key"),
            "--broker", f"127.0.0.1:{fleet.broker.port}", "--db", str(fleet.root / "fleet.db"),
            "--serve", f"127.0.0.1:{fleet.model_port}", "--url-host", "127.0.0.1",
            "--canary", "2", "--soak", "5s", "--min-items", "6", "--resend", "20s", *extra]


def phases(fleet) -> dict[str, str]:
    db = sqlite3.connect(fleet.root / "fleet.db")
    try:
        rid = db.execute("SELECT MAX(id) FROM rollouts").fetchone()[0]
        return dict(db.execute("SELECT bin_id, phase FROM targets WHERE rollout = ?", (rid,)).fetchall())
    finally:
        db.close()


def test_status_sees_every_bin_and_a_killed_one_goes_offline(fleet):
    v1 = sha(fleet.v1)
    assert wait(lambda: all(b.get("online") and b.get("model_sha256") == v1 and b["items_today"] > 0
                            for b in fleet.status().values()) and len(fleet.status()) == len(BINS), 120), fleet.status()
    rows = fleet.status()
    assert sorted(rows) == BINS
    r = rows["bin01"]
    assert r["model_version"] == 1 and r["holds"] == [] and r["faults"] == []
    assert len(r["fill"]) == 7 and not any(f["full"] for f in r["fill"])
    assert 0.0 <= r["uncertain_share"] <= 1.0 and r["last_seen"]
    table = fleet.fleet("status", "--broker", f"127.0.0.1:{fleet.broker.port}").stdout
    assert "6 bins, 6 online" in table

    from ecosorter.fleet.broker import Broker
    from ecosorter.fleet.view import FleetView

    view = FleetView(Broker(host="127.0.0.1", port=fleet.broker.port)).start()  # watching live
    try:
        fleet.kill("bin06")  # kill -9: no goodbye; the broker's last will says offline
        # The kernel closes a killed process's socket, so the broker sends the will at once, not after
        # 1.5 x keepalive (its limit for a silent client): the limit here is for a will never sent, not a
        # measurement, and is wide because six simulated bins share CI's two cores with this test.
        assert wait(lambda: view.get("bin06").online is False, 60, every=0.05)
    finally:
        view.close()
    assert [b for b, r in fleet.status().items() if not r["online"]] == ["bin06"]


def test_a_model_that_makes_every_item_uncertain_is_rolled_back_on_the_canaries_only(fleet):
    bad = uncertain_model(fleet.root / "bad.tflite", 2)
    bad_sha, v1 = sha(bad), sha(fleet.v1)
    r = subprocess.run(rollout_args(fleet, bad), capture_output=True, text=True, timeout=180, cwd=fleet.root)
    assert r.returncode == 4, r.stdout + r.stderr  # rolled back, not done
    assert "regression: uncertain share 100%" in r.stdout, r.stdout
    p = phases(fleet)
    assert p["bin01"] == p["bin02"] == "rolled_back", p
    assert {p[b] for b in BINS[2:]} == {"cancelled"}, p
    # the canaries sorted with it (that is how it was caught); the others never saw it
    assert all(bad_sha in fleet.models_seen(b) for b in BINS[:2])
    assert all(bad_sha not in fleet.models_seen(b) for b in BINS[2:])
    assert not any((fleet.state_dir(b) / "models" / f"sha-{bad_sha}.tflite").exists() for b in BINS[2:])
    assert wait(lambda: all(fleet.status()[b]["model_sha256"] == v1 for b in BINS[:5]), 30)
    st = json.loads(fleet.fleet("rollout", "--status", "--json", "--db", str(fleet.root / "fleet.db")).stdout)
    assert st["rollout"]["state"] == "rolled back" and "bin0" in st["rollout"]["reason"]


def test_a_good_model_reaches_every_bin_through_a_killed_fleet_command_and_an_offline_bin(fleet):
    if "bin06" in fleet.procs:
        fleet.kill("bin06")
    good = versioned_model(fleet.root / "v3.tflite", 3)
    good_sha = sha(good)
    log = open(fleet.root / "rollout1.log", "w")  # noqa: SIM115
    first = subprocess.Popen(rollout_args(fleet, good), stdout=log, stderr=subprocess.STDOUT, cwd=fleet.root)
    # kill -9 the fleet command once the canaries run the model (mid-soak, wave 1 not sent yet)
    assert wait(lambda: (fleet.root / "fleet.db").exists() and
                [phases(fleet).get(b) for b in BINS[:2]] == ["installed"] * 2, 90), phases(fleet)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    db = sqlite3.connect(fleet.root / "fleet.db")
    assert db.execute("SELECT state FROM rollouts ORDER BY id DESC LIMIT 1").fetchone()[0] == "running"
    db.close()
    second = subprocess.Popen(rollout_args(fleet, None, "--resume"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=fleet.root)
    # bin06 was offline when the rollout started; it comes back once the waves have gone out
    assert wait(lambda: all(phases(fleet)[b] in ("installed", "ok") for b in BINS[:5]), 120), phases(fleet)
    assert phases(fleet)["bin06"] == "pending"
    fleet.start("bin06")
    out, _ = second.communicate(timeout=150)
    assert second.returncode == 0, out
    assert set(phases(fleet).values()) == {"ok"}, phases(fleet)
    assert wait(lambda: all(r["model_sha256"] == good_sha and r["model_version"] == 3 and r["online"]
                            for r in fleet.status().values()), 30), fleet.status()
    assert "bin06: install sent" in out
