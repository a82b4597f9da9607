"""True labels (event log, `ecosorter label`, CSV import) and the training export built on them."""

from __future__ import annotations

import csv
import json
import sqlite3
from datetime import datetime, timezone

import pytest

from ecosorter.edge.cli import main
from ecosorter.edge.config import load_config
from ecosorter.edge.record.events import EventLog
from ecosorter.edge.record.export import ExportError, parse_since
from ecosorter.edge.sorter import build_sorter
from tests.conftest import SAMPLES


def sort_samples(state, bin_id: str = "bin7"):
    """The 13 bundled photos sorted (mock pins), every photo captured: (config, events, model sha256)."""
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "record.capture": "all", "bin_id": bin_id})
    events = []
    with build_sorter(cfg, state_dir=state) as sorter:
        sorter.run(on_event=events.append)
        sha = sorter.model.sha256
    assert len(events) == 13
    return cfg, events, sha


@pytest.fixture(scope="module")
def sorted_bin(tmp_path_factory):
    state = tmp_path_factory.mktemp("bin")
    return state, sort_samples(state)[1]


def copy_state(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_set_label_stores_who_and_when_and_unknown_id_is_false(tmp_path, sorted_bin):
    state = copy_state(sorted_bin[0], tmp_path / "s")
    ev = sorted_bin[1][0]
    with EventLog(state / "events.db") as log:
        assert log.flag(ev.id)
        assert log.needs_label() == [ev.id]  # flagged: a person must say what it was
        assert log.set_label(ev.id, "logam", "page:kiosk")
        assert not log.set_label("no-such-id", "logam", "x")
        with pytest.raises(ValueError, match="label 'Logam; DROP'"):
            log.set_label(ev.id, "Logam; DROP", "x")
        row = log.query("SELECT true_label, labeled_by, labeled_at, flagged FROM events WHERE id = ?", (ev.id,))[0]
        assert (row["true_label"], row["labeled_by"], row["flagged"]) == ("logam", "page:kiosk", 1)
        assert abs((datetime.now(timezone.utc) - datetime.fromisoformat(row["labeled_at"])).total_seconds()) < 600
        assert log.needs_label() == []


def test_old_event_log_gets_the_label_columns(tmp_path):
    db = sqlite3.connect(tmp_path / "events.db")
    db.executescript("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
                     "time TEXT NOT NULL, label TEXT NOT NULL, confidence REAL NOT NULL, probabilities TEXT "
                     "NOT NULL, uncertain INTEGER NOT NULL, compartment INTEGER NOT NULL, routed_to INTEGER NOT "
                     "NULL, routed_ok INTEGER NOT NULL, frames INTEGER NOT NULL, model_sha256 TEXT NOT NULL, "
                     "latency_ms TEXT NOT NULL, image TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '', "
                     "flagged INTEGER NOT NULL DEFAULT 0, bin_id TEXT NOT NULL DEFAULT '', source_name TEXT NOT "
                     "NULL DEFAULT '');"
                     "INSERT INTO events (id, time, label, confidence, probabilities, uncertain, compartment, "
                     "routed_to, routed_ok, frames, model_sha256, latency_ms) VALUES ('old1', "
                     "'2026-01-01T00:00:00.000+00:00', 'kaca', 0.9, '{}', 0, 0, 0, 1, 1, 'abc', '{}');")
    db.commit()
    db.close()
    with EventLog(tmp_path / "events.db") as log:
        assert log.set_label("old1", "plastik", "cli:test")
        assert log.query("SELECT true_label FROM events")[0]["true_label"] == "plastik"


def test_label_cli_one_and_strict_import(tmp_path, sorted_bin, capsys):
    state = copy_state(sorted_bin[0], tmp_path / "s")
    ids = [e.id for e in sorted_bin[1]]
    assert main(["label", ids[0], "kaca", "--state-dir", str(state), "--by", "ops"]) == 0
    assert main(["label", ids[1], "glass", "--state-dir", str(state)]) == 2
    # what is printed on the bin (the English or Indonesian word) points at the id meant
    assert "'glass' is not one of the model's labels (did you mean 'kaca'?): kaca, kardus" in capsys.readouterr().err
    assert main(["label", ids[1], "Plastik", "--state-dir", str(state)]) == 2
    assert "(did you mean 'plastik'?)" in capsys.readouterr().err
    assert main(["label", ids[1], "sampah", "--state-dir", str(state)]) == 2
    assert "'sampah' is not one of the model's labels: kaca," in capsys.readouterr().err
    assert main(["label", "nope", "kaca", "--state-dir", str(state)]) == 2
    assert "no event with id 'nope'" in capsys.readouterr().err

    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,true_label\n{ids[1]},kardus\nnope,kaca\n{ids[2]},paper\n{ids[3]},\n")
    assert main(["label", "--import", str(bad), "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert "line 4: label 'paper' is not one of the model's labels (did you mean 'kertas'?)" in err
    assert "nothing imported" in err
    bad.write_text(f"id,true_label\n{ids[1]},kardus\nnope,kaca\n")
    assert main(["label", "--import", str(bad), "--state-dir", str(state)]) == 2
    assert "line 3: no event with id 'nope'" in capsys.readouterr().err
    with EventLog(state / "events.db") as log:  # all or nothing: the good row was not applied either
        assert log.query("SELECT true_label FROM events WHERE id = ?", (ids[1],))[0]["true_label"] == ""
    (tmp_path / "nohead.csv").write_text(f"{ids[1]},kardus\n")
    assert main(["label", "--import", str(tmp_path / "nohead.csv"), "--state-dir", str(state)]) == 2
    assert "needs a header with columns id and true_label" in capsys.readouterr().err

    good = tmp_path / "good.csv"
    good.write_text(f"id,true_label,labeled_by\n{ids[1]},kardus,\n{ids[2]},kertas,field-team\n{ids[3]},\n")
    assert main(["label", "--import", str(good), "--state-dir", str(state)]) == 0
    assert "labelled 2 events" in capsys.readouterr().out
    with EventLog(state / "events.db") as log:
        got = {r["id"]: (r["true_label"], r["labeled_by"]) for r in log.query("SELECT * FROM events")}
    assert got[ids[0]] == ("kaca", "ops") and got[ids[1]][0] == "kardus" and got[ids[1]][1].startswith("cli:")
    # who imported, not what the CSV claims: a labeled_by column is not proof of anything
    assert got[ids[2]][0] == "kertas" and got[ids[2]][1].startswith("cli:") and got[ids[3]] == ("", "")
    with EventLog(state / "events.db") as log:
        before = log.query("SELECT labeled_at FROM events WHERE id = ?", (ids[1],))[0]["labeled_at"]
    assert main(["label", "--import", str(good), "--state-dir", str(state)]) == 0  # the same file again
    with EventLog(state / "events.db") as log:  # unchanged labels keep when they were given
        assert log.query("SELECT labeled_at FROM events WHERE id = ?", (ids[1],))[0]["labeled_at"] == before


def test_export_folders_follow_true_labels_and_flags(tmp_path, sorted_bin):
    state = copy_state(sorted_bin[0], tmp_path / "s")
    evs = sorted_bin[1]
    wrong = next(e for e in evs if e.label != "plastik")
    flagged_only = next(e for e in evs if e.id != wrong.id)
    with EventLog(state / "events.db") as log:
        assert log.flag(wrong.id) and log.set_label(wrong.id, "plastik", "page")
        assert log.flag(flagged_only.id)
    out = tmp_path / "export"
    assert main(["export", str(out), "--state-dir", str(state), "--since", "1d"]) == 0
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13 and list(rows[0])[:3] == ["photo", "id", "time"]
    by_id = {r["id"]: r for r in rows}
    r = by_id[wrong.id]
    assert r["photo"].startswith("plastik/") and r["predicted"] == wrong.label and r["true_label"] == "plastik"
    assert r["labeled_by"] == "page" and r["flagged"] == "1" and r["bin_id"] == "bin7"
    assert set(json.loads(r["probabilities"])) == set(wrong.probabilities)
    assert int(r["compartment"]) == wrong.compartment and int(r["routed_to"]) == wrong.routed_to
    assert by_id[flagged_only.id]["photo"].startswith("_unlabeled/")
    others = [r for i, r in by_id.items() if i not in (wrong.id, flagged_only.id)]
    assert all(r["photo"].split("/")[0] == r["predicted"] for r in others)
    assert all((out / r["photo"]).is_file() for r in rows)

    only = tmp_path / "only"
    assert main(["export", str(only), "--state-dir", str(state), "--labeled-only"]) == 0
    assert [p.relative_to(only).parts[0] for p in only.rglob("*.jpg")] == ["plastik"]

    # the README's loop exports twice: an old export must not leave a photo under its old class
    with EventLog(state / "events.db") as log:
        assert log.set_label(flagged_only.id, "kaca", "page")
    assert main(["export", str(out), "--state-dir", str(state)]) == 2  # refused: it is not empty
    assert main(["export", str(out), "--state-dir", str(state), "--replace"]) == 0
    where = [p.relative_to(out).parts[0] for p in out.rglob(f"{flagged_only.id}.jpg")]
    assert where == ["kaca"]
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(out), "--state-dir", str(state), "--replace"]) == 2  # not an export: untouched
    assert (out / "notes.txt").exists()


def test_a_label_keeps_the_photo_even_when_the_policy_did_not_capture_it(tmp_path):
    """Only uncertain items are captured by default; a label given on the page or over MQTT later
    is what retraining needs, so the sorter keeps that item's photo then (export warns otherwise)."""
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "record.capture": "none"})
    with build_sorter(cfg, state_dir=tmp_path) as sorter:
        events = []
        sorter.run(on_event=events.append)
        assert sorter.label(events[-1].id, "kaca", "page@127.0.0.1")
        with EventLog(tmp_path / "events.db") as log:  # a label for an item whose frame is long gone
            assert log.set_label(events[0].id, "kertas", "cli:ops")
    out = tmp_path / "out"
    assert main(["export", str(out), "--state-dir", str(tmp_path), "--labeled-only"]) == 0
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.jpg")] == [f"kaca/{events[-1].id}.jpg"]


def test_since_parses_dates_timestamps_durations_and_refuses_the_rest(tmp_path, capsys, sorted_bin):
    now = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
    assert parse_since("7d", now) == "2026-11-22T12:00:00.000+00:00"
    assert parse_since("12h", now) == "2026-11-29T00:00:00.000+00:00"
    assert parse_since("1d12h", now) == "2026-11-28T00:00:00.000+00:00"
    assert parse_since("2026-11-01", now) == "2026-11-01T00:00:00.000+00:00"
    assert parse_since("2026-11-01T08:00:00+07:00", now) == "2026-11-01T01:00:00.000+00:00"
    assert parse_since("1795910400", now) == "2026-11-29T00:00:00.000+00:00"
    for bad in ("yesterday", "7 days", "2026-13-01", "-3d"):
        with pytest.raises(ExportError, match="expected a date"):
            parse_since(bad, now)
    with pytest.raises(ExportError, match="in the future"):
        parse_since("2027-01-01", now)
    assert main(["export", str(tmp_path / "o"), "--state-dir", str(sorted_bin[0]), "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_says_how_many_events_had_no_photo_and_why(tmp_path, capsys, sorted_bin):
    """"exported 1 photos" from a bin that sorted 13 items left the user guessing where the other
    12 went: the summary counts the events, those never photographed (record.capture) and those
    whose photo the quota removed, and they add up."""
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "record.capture": "none"})
    state = tmp_path / "none"
    with build_sorter(cfg, state_dir=state) as sorter:
        events = []
        sorter.run(on_event=events.append)
        assert sorter.label(events[-1].id, "kaca", "page")  # a label keeps that one photo
    assert main(["export", str(tmp_path / "a"), "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert f"exported 1 photo of 13 events from {state}" in out
    assert "12 events have no photo: 12 never taken (record.capture" in out and "quota" not in out

    # every photo taken, then 3 removed from the disk (as the capture quota does, oldest first)
    state = copy_state(sorted_bin[0], tmp_path / "all")
    for p in sorted((state / "captures").rglob("*.jpg"))[:3]:
        p.unlink()
    assert main(["export", str(tmp_path / "b"), "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "exported 10 photos of 13 events" in out
    assert "3 events have no photo: 3 removed from the disk (record.capture_quota_mb" in out and "never" not in out
    assert len(list((tmp_path / "b").rglob("*.jpg"))) == 10
    # all there: nothing to explain
    assert main(["export", str(tmp_path / "c"), "--state-dir", str(sorted_bin[0])]) == 0
    out = capsys.readouterr().out
    assert "exported 13 photos of 13 events" in out and "no photo" not in out
