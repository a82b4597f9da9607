"""Performance figures come from one generator: a committed document that disagrees with the
committed docs/performance.json fails here (`python -m benchmarks` measures and rewrites both;
`python -m benchmarks.figures` re-renders the documents from the JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.figures import BLOCK, FIGURES, QUOTED, ROOT, render_docs


@pytest.fixture(scope="module")
def figures() -> dict:
    return json.loads(FIGURES.read_text())


def test_the_figures_say_where_and_when_they_were_measured(figures):
    assert figures["cpu"] and figures["cpu"] != "unknown" and figures["date"][:2] == "20"
    assert "shared" in figures["load"] and figures["cores"] >= 1
    assert figures["wall_s"] < 600  # the generator stays quick enough to re-run


def test_the_event_log_check_is_measured_with_the_rest(figures):
    """benchmarks/log_check.py ran only alone (docs/log_check.json): now `python -m benchmarks` runs
    it too, on its LOG_CHECK_EVENTS log, and performance.md shows it."""
    from benchmarks.log_check import LOG_CHECK_EVENTS

    c = figures["log_check"]
    assert c["events"] == LOG_CHECK_EVENTS and c["append_ms"] > 0 and c["quick_check_cold_ms"] > 0
    assert c["date"] == figures["date"] and c["cpu"] == figures["cpu"]  # in the same run
    assert f"on a {LOG_CHECK_EVENTS:,}-event log" in (ROOT / "docs" / "performance.md").read_text()


def test_every_document_agrees_with_the_committed_figures(figures):
    stale = [str(path.relative_to(ROOT)) for path, text in render_docs(figures).items()
             if path.read_text(encoding="utf-8") != text]
    assert not stale, f"{stale} disagree with docs/performance.json: run python -m benchmarks.figures (or make bench)"


def test_each_quoting_document_has_its_blocks_filled(figures):
    for doc, names in QUOTED.items():
        text = (ROOT / doc).read_text(encoding="utf-8")
        found = {m["name"]: m["body"] for m in BLOCK.finditer(text)}
        assert set(names) <= set(found), doc
        assert all(found[n].strip() and figures["cpu"] in found[n] for n in names), doc


def test_a_changed_figure_is_caught(figures, tmp_path):
    """The check can fail: a document edited by hand (or left from an older run) is found."""
    import shutil

    for rel in ["docs/performance.md", *QUOTED]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    readme = tmp_path / "README.md"
    lite = figures["inference_ms"]["litert demo int8 (1 thr)"]
    readme.write_text(readme.read_text().replace(f"{lite:.1f} ms for the demo", f"{lite + 1:.1f} ms for the demo"))
    changed = [p.name for p, text in render_docs(figures, tmp_path).items() if p.read_text() != text]
    assert changed == ["README.md"]


def test_no_second_source_of_figures():
    assert not (ROOT / "docs" / "lite0_benchmark.json").exists()
    old = {"58.5 ms", "5.66 ms", "about 10 s", "lite0_vs_resnet50", "benchmarks.status_page` on"}
    for doc in [Path("README.md"), *Path("docs").glob("*.md")]:
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert not [s for s in old if s in text], doc
