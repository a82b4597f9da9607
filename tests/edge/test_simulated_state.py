"""Where `run --simulate --config C` keeps what it sorted: C's record.state_dir (events, true labels,
and the holds' machine_log table in the same events.db), found again by `label --config C` and `export --config C`; never an installed
bin's state folder, and never a last-good-hardware.json that `ecosorter safe` would trust.
Real SQLite, real files, gpiozero's MockFactory pins (as --simulate sets them)."""

from __future__ import annotations

import csv
import re
import sqlite3
from pathlib import Path

import pytest

from ecosorter.edge.cli import main
from ecosorter.edge.sorter import LAST_GOOD_HARDWARE

INSTALLED = Path("/var/lib/ecosorter")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A user with an empty home: the config-less simulated bin's folder would be under it."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    return home


def write_config(path: Path, state_dir: Path | None) -> Path:
    record = f'[record]\nstate_dir = "{state_dir}"\ncapture = "all"\n' if state_dir else ""
    path.write_text('[hardware]\nled_on_s = 0.0\n[status]\nenabled = false\n' + record)
    return path


def run_simulated(*args: str) -> int:
    return main(["run", "--simulate", "--fast", "--no-status", "--max-items", "3", *args])


def test_simulated_run_label_and_export_share_the_configs_state_dir(tmp_path, home, capsys):
    state = tmp_path / "pilot-state"
    cfg = write_config(tmp_path / "c.toml", state)
    assert run_simulated("--config", str(cfg)) == 0
    out = capsys.readouterr().out
    ids = re.findall(r"\bid ([0-9a-f]{32})\b", out)
    assert len(ids) == 3, out
    assert f"state in {state}" in out
    with sqlite3.connect(state / "events.db") as db:
        assert sorted(r[0] for r in db.execute("SELECT id FROM events")) == sorted(ids)
    assert not (home / ".local" / "state" / "ecosorter").exists()  # not the config-less demo's folder
    assert not (state / LAST_GOOD_HARDWARE).exists()  # mock pins are no hardware for `safe` to trust

    assert main(["label", "--config", str(cfg), ids[0], "kaca"]) == 0
    with sqlite3.connect(state / "events.db") as db:
        assert db.execute("SELECT true_label FROM events WHERE id = ?", (ids[0],)).fetchone() == ("kaca",)
    export = tmp_path / "export"
    assert main(["export", "--config", str(cfg), str(export)]) == 0
    assert f"from {state} to {export}" in capsys.readouterr().out
    with open(export / "labels.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(ids) and rows[ids[0]]["true_label"] == "kaca"


@pytest.mark.parametrize("how", ["config", "state-dir", "neither"])
def test_the_runs_last_line_gives_label_and_export_what_finds_its_folder(tmp_path, home, capsys, how):
    """The closing hint is a command that works: with --config C the bare `ecosorter label` would
    look in another folder (the installed bin's, or the config-less simulated bin's)."""
    state = tmp_path / "pilot-state"
    cfg = write_config(tmp_path / "c.toml", state)
    args = {"config": ["--config", str(cfg)], "state-dir": ["--state-dir", str(state)], "neither": []}[how]
    assert run_simulated(*args) == 0
    out = capsys.readouterr().out
    ids = re.findall(r"\bid ([0-9a-f]{32})\b", out)
    hint = re.search(r"`ecosorter label ID LABEL(.*?)` and `ecosorter export OUT/(.*?)` find them there", out)
    assert hint is not None, out
    assert hint.group(1) == hint.group(2) == {"config": f" --config {cfg}", "state-dir": f" --state-dir {state}",
                                               "neither": ""}[how]
    assert main(["label", ids[0], "kaca", *hint.group(1).split()]) == 0  # as printed: it finds the event
    assert "true label kaca" in capsys.readouterr().out


def test_label_and_export_with_a_config_that_is_not_there(tmp_path, home, capsys):
    missing = tmp_path / "nope.toml"
    assert main(["label", "--config", str(missing), "0" * 32, "kaca"]) == 2
    assert main(["export", "--config", str(missing), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count(f"--config {missing}: file not found") == 2
    assert not (tmp_path / "out").exists()


def test_a_simulated_run_keeps_no_hardware_memory(tmp_path, home):
    """--state-dir given: events there, but no last-good-hardware.json (a real run writes one)."""
    state = tmp_path / "s"
    cfg = write_config(tmp_path / "c.toml", tmp_path / "unused")
    assert run_simulated("--config", str(cfg), "--state-dir", str(state)) == 0
    assert (state / "events.db").is_file() and not (state / LAST_GOOD_HARDWARE).exists()
    assert not (tmp_path / "unused").exists()  # --state-dir wins over the config's, as for a real run


def _untouched(path: Path):
    """What is in `path` now (None: not there), to show a refused run changed nothing."""
    return sorted(p.name for p in path.iterdir()) if path.exists() else None


@pytest.mark.parametrize("how", ["config default", "config says so", "--state-dir", "a folder inside it"])
def test_a_simulated_run_refuses_the_installed_bins_state_dir(tmp_path, home, capsys, how):
    before = _untouched(INSTALLED)
    cfg = write_config(tmp_path / "c.toml", INSTALLED if how == "config says so" else None)
    given = {"--state-dir": INSTALLED, "a folder inside it": INSTALLED / "models"}.get(how)
    extra = ["--state-dir", str(given)] if given else []
    assert run_simulated("--config", str(cfg), *extra) == 2
    err = capsys.readouterr().err
    assert "an installed bin's state folder" in err and "a simulated run does not write there" in err, err
    if given:
        assert f"--state-dir {given}" in err and "give another --state-dir" in err
    else:
        assert f"record.state_dir in {cfg} is {INSTALLED}" in err
        assert f"set record.state_dir in {cfg} to another folder, or pass --state-dir DIR" in err
    assert _untouched(INSTALLED) == before
    assert not (home / ".local").exists()


def test_the_installed_configs_own_state_dir_is_refused_too(tmp_path, home, capsys, monkeypatch):
    """A bin installed with record.state_dir = /srv/...: `run --simulate --config` its own config
    must not write into its log either."""
    import ecosorter.edge.config as config

    bin_state = tmp_path / "srv" / "ecosorter"
    installed = write_config(tmp_path / "etc-config.toml", bin_state)
    monkeypatch.setattr(config, "DEFAULT_PATH", installed)
    assert run_simulated("--config", str(installed)) == 2
    assert f"record.state_dir in {installed} is {bin_state}" in capsys.readouterr().err
    assert not bin_state.exists()
    # another config of the same machine is fine: its own folder
    own = write_config(tmp_path / "mine.toml", tmp_path / "mine")
    assert run_simulated("--config", str(own)) == 0
    assert (tmp_path / "mine" / "events.db").is_file() and not bin_state.exists()
