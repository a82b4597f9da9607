"""Every folder setuptools would see as a package is declared, so `pip install '.[edge]'` prints
no "Package ... is absent from the `packages` configuration" warning and ships its files."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_source_folder_is_a_declared_package():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(tool["packages"])
    found = set()
    for top, folder in tool["package-dir"].items():
        base = ROOT / folder
        for d in [base, *(p for p in base.rglob("*") if p.is_dir())]:
            rel = d.relative_to(base).parts
            if any(part.startswith((".", "__")) or part.endswith(".egg-info") for part in rel):
                continue
            if any(f.is_file() for f in d.iterdir()):
                found.add(".".join((top, *rel)))
    assert found - declared == set(), "add these to [tool.setuptools] packages (and their files to package-data)"
    data = tool["package-data"]
    assert data["ecosorter.edge.demo.samples"] == ["*.jpg"]
    assert list((ROOT / "edge/demo/samples").glob("*.jpg"))
