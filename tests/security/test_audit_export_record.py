"""Audit of issue 18.10: `export --replace` when the export's own record was edited afterwards
(by hand, a script, or someone who wants files outside removed). Real SQLite, real photos, the CLI."""

from __future__ import annotations

import hashlib
import json

import pytest

from ecosorter.edge.record.export import RECORD
from tests.security.test_export_and_labels import export, sorted_bin, tree  # noqa: F401


def _edit(out, change) -> None:
    d = json.loads((out / RECORD).read_text())
    change(d)
    (out / RECORD).write_text(json.dumps(d))


@pytest.mark.parametrize("change, named", [
    # a path outside the export, with the right sha256: never walked, never removed
    (lambda d, v: d["files"].update({"../victim/precious.jpg": hashlib.sha256(b"keep").hexdigest()}), None),
    (lambda d, v: d["files"].update({str(v / "precious.jpg"): hashlib.sha256(b"keep").hexdigest()}), None),
    # a photo's hash changed in the record: that photo is "changed since the export"
    (lambda d, v: d["files"].update({k: "0" * 64 for k in list(d["files"])[:1] if k != "labels.csv"}),
     "(changed since the export)"),
    # the record no longer lists a photo: it is not the export's
    (lambda d, v: d["files"].pop(next(k for k in d["files"] if k != "labels.csv")), "(not written by the export)"),
    (lambda d, v: d.update(files=["kaca/x.jpg"]), "unreadable"),
    (lambda d, v: d.pop("files"), "unreadable"),
])
def test_an_edited_record_removes_nothing_outside_and_nothing_unlisted(tmp_path, sorted_bin, capsys,  # noqa: F811
                                                                       change, named):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.jpg").write_bytes(b"keep")
    out = tmp_path / "out"
    assert export(out, sorted_bin[0]) == 0
    _edit(out, lambda d: change(d, victim))
    before = tree(out)
    code = export(out, sorted_bin[0], "--replace")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (victim / "precious.jpg").read_bytes() == b"keep"
    if named is None:  # the extra entries are ignored: the export itself is replaced
        assert code == 0 and len(tree(out)) == len(before)
    else:
        assert code == 2 and named in err and tree(out) == before
