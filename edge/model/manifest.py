"""The contract between convert/ and edge/: a JSON manifest embedded in the .tflite file.

It holds everything the edge needs to reproduce training exactly (labels in output order, the
input tensor, the preprocessing) and where the model came from and how well it was verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ecosorter.edge.preprocess.spec import InputSpec, PreprocessSpec

MANIFEST_NAME = "ecosorter.manifest"
FORMAT = "ecosorter-manifest/1"


@dataclass(frozen=True)
class Label:
    id: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Label:
        """`kaca` or `kaca,Kaca (glass)` or `kaca<TAB>Kaca (glass)`."""
        for sep in ("\t", ","):
            if sep in text:
                i, n = text.split(sep, 1)
                return cls(i.strip(), n.strip() or i.strip())
        return cls(text.strip(), text.strip())


DEFAULT_LABELS: tuple[Label, ...] = (
    Label("kaca", "Kaca (glass)"),
    Label("kardus", "Kardus (cardboard)"),
    Label("kertas", "Kertas (paper)"),
    Label("khusus", "Khusus (special/other)"),
    Label("logam", "Logam (metal)"),
    Label("organik", "Organik (organic)"),
    Label("plastik", "Plastik (plastic)"),
)


def read_labels_file(text: str) -> list[Label]:
    labels = [Label.parse(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    ids = [lb.id for lb in labels]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"duplicate label ids: {', '.join(sorted(dup))}")
    if not labels:
        raise ValueError("no labels in the file")
    return labels


def load_labels_file(path, what: str = "--labels") -> list[Label] | None:
    """Labels from a file given on the command line or in the config; None when not given."""
    if not path:
        return None
    from ecosorter.edge.errors import EcoSorterError

    try:
        return read_labels_file(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        raise EcoSorterError(f"{what} {path}: {e}") from None


@dataclass(frozen=True)
class Manifest:
    labels: tuple[Label, ...]
    input: InputSpec
    preprocess: PreprocessSpec
    output: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)

    @property
    def label_ids(self) -> list[str]:
        return [lb.id for lb in self.labels]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "labels": [{"id": lb.id, "name": lb.name} for lb in self.labels],
            "input": self.input.to_dict(),
            "output": self.output,
            "preprocess": self.preprocess.to_dict(),
            "source": self.source,
            "verification": self.verification,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and check a manifest; ValueError says which field is wrong."""
        try:
            d = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"manifest is not valid JSON: {e}") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"manifest format is {d.get('format') if isinstance(d, dict) else None!r}, expected {FORMAT!r}")
        for key in ("labels", "input", "preprocess"):
            if key not in d:
                raise ValueError(f"manifest has no {key!r}")
        try:
            labels = tuple(Label(str(x["id"]), str(x.get("name", x["id"]))) for x in d["labels"])
            inp = InputSpec.from_dict(d["input"])
            prep = PreprocessSpec.from_dict(d["preprocess"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"manifest field missing or mistyped: {e}") from None
        if not labels:
            raise ValueError("manifest has an empty label list")
        return cls(labels=labels, input=inp, preprocess=prep, output=dict(d.get("output") or {}),
                   source=dict(d.get("source") or {}), verification=dict(d.get("verification") or {}))
