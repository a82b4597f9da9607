"""Every folder setuptools would see as a package is declared, so `pip install '.[edge]'` prints
no "Package ... is absent from the `packages` configuration" warning and ships its files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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


# the distributions that each install the `tensorflow` module (two of them write the same files)
TENSORFLOWS = {"tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos", "tensorflow-aarch64"}


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name.lower().replace("_", "-")


def test_the_convert_extra_installs_one_tensorflow():
    """tf-keras requires `tensorflow` itself: the extra names that one distribution and no other, on
    every platform (it had tensorflow-cpu on x86_64, so pip installed both, 2 x 270 MB)."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["convert"]
    named = [_name(r) for r in extra if _name(r) in TENSORFLOWS]
    assert named == ["tensorflow"], extra
    assert not any(";" in r for r in extra if _name(r) in TENSORFLOWS), "one TensorFlow whatever the machine"
    assert "tf-keras" in {_name(r) for r in extra}


def test_tf_keras_requires_the_tensorflow_the_extra_names():
    """What pip reads: the installed tf-keras's own metadata (skipped without the convert extra)."""
    from importlib import metadata

    try:
        requires = metadata.requires("tf-keras") or []
    except metadata.PackageNotFoundError:
        pytest.skip("tf-keras is not installed (pip install -e '.[convert]')")
    wanted = {_name(r) for r in requires if _name(r) in TENSORFLOWS and "extra ==" not in r}
    assert wanted == {"tensorflow"}, requires
