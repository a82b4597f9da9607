"""Compartments as printed on the bin: `[hardware] compartment_names`, numbered from 1 by default."""

from __future__ import annotations

import re

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.errors import ConfigError
from ecosorter.edge.machine import Machine, compartment_label
from ecosorter.edge.status import StatusBoard
from tests.edge.page_states import COMPARTMENTS, LABELS

NAMES = ["A1", "A2", "B1", "B2", "C1", "C2", "Sisa"]


def test_default_is_numbered_from_one():
    cfg = load_config()
    assert cfg.hardware.compartment_names == []
    assert [compartment_label(i, cfg.hardware.compartment_names) for i in range(7)] == list("1234567")
    m = Machine()
    m.raise_("full", "", 0)
    full = m.snapshot()["holds"][0]
    assert full["compartment"] == 0 and full["compartment_name"] == "1"
    assert full["reason_id"] == "Kompartemen 1 penuh" and full["reason_en"] == "Compartment 1 is full"


def test_configured_names_reach_the_words_and_the_board():
    cfg = load_config(overrides={"hardware.compartment_names": NAMES})
    m = Machine(compartment_names=cfg.hardware.compartment_names)
    m.raise_("full", "", 6)
    snap = m.snapshot()
    assert snap["state"] == "held" and (snap["word_id"], snap["word_en"]) == ("Tunggu", "Hold")
    assert snap["holds"][0]["action_en"] == "Empty compartment Sisa; other items keep sorting"
    board = StatusBoard("b", LABELS, COMPARTMENTS, compartment_names=NAMES, fill_sensors=[6])
    comps = board.snapshot()["compartments"]
    assert [c["name"] for c in comps] == NAMES and [c["sensor"] for c in comps] == [False] * 6 + [True]
    assert board.snapshot()["words"]["fault"] == ["Berhenti", "Fault"]


@pytest.mark.parametrize(("names", "message"), [
    (["A", "B"], "hardware.compartment_names: 2 names for 7 compartments"),
    (["A", "B", " ", "D", "E", "F", "G"], "hardware.compartment_names[2]: ' ': 1-12 characters"),
    (["A", "B", "C", "D", "E", "F", "a name far too long"], "hardware.compartment_names[6]"),
])
def test_bad_names_are_named(names, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides={"hardware.compartment_names": names})
    assert message in str(e.value)


def test_a_typo_gets_the_nearest_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hardware]\ncompartment_name = ["1", "2", "3", "4", "5", "6", "7"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "hardware.compartment_name" in str(e.value) and "compartment_names" in str(e.value)


def test_run_prints_the_names(tmp_path, capsys):
    from ecosorter.edge.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[hardware]\npin_factory = "mock"\nled_on_s = 0.0\ncompartment_names = {NAMES!r}\n'.replace("'", '"')
                   + '[status]\nenabled = false\n')
    assert main(["run", "--simulate", "--config", str(cfg), "--fast", "--max-items", "3",
                 "--state-dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    shown = re.findall(r"-> compartment (\S+)", out)
    assert len(shown) == 3 and set(shown) <= set(NAMES), out
    assert any(f"    {n:<3} " in out for n in NAMES), out


def test_the_sorter_wires_names_and_fill_sensors_to_the_board_and_the_machine(tmp_path):
    from ecosorter.edge.sorter import build_sorter
    from tests.conftest import SAMPLES

    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES), "hardware.pin_factory": "mock",
                                 "hardware.compartment_names": NAMES, "hardware.full_sensor_pins": {"2": 22},
                                 "hardware.full_confirm_s": 0.0, "status.enabled": False})
    with build_sorter(cfg, state_dir=tmp_path) as sorter:
        comps = sorter.board.snapshot()["compartments"]
        assert [c["name"] for c in comps] == NAMES and [c["index"] for c in comps if c["sensor"]] == [2]
        sorter.machine.raise_("full", "", 2)
        hold = sorter.board.snapshot()["machine"]["holds"][0]
        assert hold["compartment_name"] == "B1" and hold["reason_en"] == "Compartment B1 is full"
