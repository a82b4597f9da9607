"""Issue 18 items 10 and 14 (export and labels): what `export --replace` may remove, CSV injection,
absurd `--since` values, and a bounded `label --import`. Real SQLite, real photos, the real CLI."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from ecosorter.edge.cli import main
from ecosorter.edge.record.events import EventLog
from ecosorter.edge.record.export import RECORD, ExportError, _cell, parse_since
from tests.edge.test_labels_export import copy_state, sort_samples


@pytest.fixture(scope="module")
def sorted_bin(tmp_path_factory):
    state = tmp_path_factory.mktemp("bin")
    return state, sort_samples(state)[1]


def export(out: Path, state: Path, *more: str) -> int:
    return main(["export", str(out), "--state-dir", str(state), *more])


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under folder (symlinks not followed) with its bytes, None for folders and links."""
    found = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(top) / name
            found[p.relative_to(folder).as_posix()] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return found


@pytest.mark.parametrize("plant, named", [
    (lambda out: (out / "holiday").mkdir() or (out / "holiday" / "me.jpg").write_bytes(b"me"), "holiday/"),
    (lambda out: (out / "kaca").mkdir(exist_ok=True) or (out / "kaca" / "important.jpg").write_bytes(b"x"),
     "kaca/important.jpg (not written by the export)"),
    (lambda out: (out / "empty").mkdir(), "empty/ (a folder the export did not write)"),
    (lambda out: (out / "x.jpg").mkdir(), "x.jpg/"),
    (lambda out: (out / "labels.csv").write_text((out / "labels.csv").read_text() + "edited\n"),
     "labels.csv (changed since the export)"),
])
def test_replace_removes_nothing_it_did_not_write(tmp_path, sorted_bin, capsys, plant, named):
    out = tmp_path / "out"
    assert export(out, sorted_bin[0]) == 0
    plant(out)
    before = tree(out)
    assert export(out, sorted_bin[0], "--replace") == 2
    err = capsys.readouterr().err
    assert named in err and "Nothing removed" in err and "Traceback" not in err
    assert tree(out) == before  # the person's things, and the earlier export too, all still there


def test_replace_removes_exactly_the_earlier_export(tmp_path, sorted_bin):
    state = copy_state(sorted_bin[0], tmp_path / "s")
    out = tmp_path / "out"
    assert export(out, state) == 0
    first = tree(out)
    wrong = sorted_bin[1][0]
    with EventLog(state / "events.db") as log:
        assert log.set_label(wrong.id, "kaca" if wrong.label != "kaca" else "kertas", "page")
    assert export(out, state, "--replace") == 0
    second = tree(out)
    assert RECORD in second and len(second) == len(first)
    assert [k for k in second if k.endswith(f"{wrong.id}.jpg")] != [k for k in first if k.endswith(f"{wrong.id}.jpg")]


def test_no_record_means_no_replace_and_symlinks_are_never_followed(tmp_path, sorted_bin, capsys):
    out = tmp_path / "old"  # an export by an older version, or any folder: no record
    out.mkdir()
    (out / "labels.csv").write_text("photo,id\n")
    assert export(out, sorted_bin[0], "--replace") == 2
    assert f"has no {RECORD}" in capsys.readouterr().err and (out / "labels.csv").exists()

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.jpg").write_bytes(b"keep")
    out = tmp_path / "out"
    assert export(out, sorted_bin[0]) == 0
    cls = next(p for p in out.iterdir() if p.is_dir())
    for f in cls.iterdir():
        f.unlink()
    cls.rmdir()
    cls.symlink_to(victim, target_is_directory=True)  # a class folder replaced by a link elsewhere
    assert export(out, sorted_bin[0], "--replace") == 2
    err = capsys.readouterr().err
    assert f"{cls.name} (a symbolic link)" in err and "Traceback" not in err
    assert (victim / "precious.jpg").read_bytes() == b"keep" and cls.is_symlink()


def test_csv_cells_a_spreadsheet_would_run_are_escaped(tmp_path, sorted_bin):
    state = copy_state(sorted_bin[0], tmp_path / "s")
    evs = sorted_bin[1]
    bad = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)"]
    with EventLog(state / "events.db") as log:
        for e, who in zip(evs, bad, strict=False):
            assert log.set_label(e.id, e.label, who)
    out = tmp_path / "out"
    assert export(out, state) == 0
    with open(out / "labels.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert [rows[e.id]["labeled_by"] for e in evs[:4]] == ["'" + b for b in bad]
    assert all(not v.startswith(("=", "+", "@")) for r in rows.values() for v in r.values())
    assert all(r["routed_to"].lstrip("-").isdigit() for r in rows.values())  # numbers stay numbers
    assert _cell("\tcmd") == "'\tcmd" and _cell("\rcmd") == "'\rcmd" and _cell(-1) == -1
    # an exported (escaped) labels.csv still imports: only id and true_label are read
    assert main(["label", "--import", str(out / "labels.csv"), "--state-dir", str(state)]) == 0


@pytest.mark.parametrize("since, why", [
    ("999999999999999d", "reaches back before 2000"),
    ("99999999999", "in the future"),  # year 5138 as epoch seconds: exported 0 silently
    ("5138-01-01", "in the future"),
    ("1999-12-31", "before 2000"),
    ("100000w", "before 2000"),
])
def test_absurd_since_values_are_refused_with_a_clear_error(tmp_path, sorted_bin, capsys, since, why):
    with pytest.raises(ExportError, match=why):
        parse_since(since)
    assert export(tmp_path / "o", sorted_bin[0], "--since", since) == 2
    err = capsys.readouterr().err
    assert why in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_label_import_of_dev_zero_or_a_huge_file_is_bounded(tmp_path, sorted_bin, capsys, monkeypatch):
    import ecosorter.edge.record.labels as labels

    state = sorted_bin[0]
    assert main(["label", "--import", "/dev/zero", "--state-dir", str(state)]) == 2
    assert "contains NUL bytes" in capsys.readouterr().err
    monkeypatch.setattr(labels, "MAX_IMPORT_BYTES", 4096)
    big = tmp_path / "big.csv"
    big.write_text("id,true_label\n" + "a,kaca\n" * 1000)
    assert main(["label", "--import", str(big), "--state-dir", str(state)]) == 2
    assert "larger than" in capsys.readouterr().err
    monkeypatch.setattr(labels, "MAX_IMPORT_ROWS", 10)
    big.write_text("id,true_label\n" + "a,\n" * 11)
    assert main(["label", "--import", str(big), "--state-dir", str(state)]) == 2
    assert "more than 10 rows" in capsys.readouterr().err
