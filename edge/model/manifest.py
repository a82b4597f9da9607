"""The contract between convert/ and edge/: a JSON manifest embedded in the .tflite file.

It holds everything the edge needs to reproduce training exactly (labels in output order, the
input tensor, the preprocessing) and where the model came from and how well it was verified.
"""

from __future__ import annotations

import json
import re
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
    parsed = [Label.parse(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    # the same rules as an embedded manifest: refused at convert time, not only at install
    labels = [_label({"id": lb.id, "name": lb.name}) for lb in parsed]
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
    version: int = 0  # monotonic (ecosorter-convert --model-version): a bin refuses a lower one
    # calibration and per-class thresholds for a contamination budget (convert/thresholds.py);
    # optional: older models have none and the bin uses its config's thresholds
    decision: dict[str, Any] | None = None

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
            "version": self.version,
            **({"decision": self.decision} if self.decision else {}),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and check a manifest; ValueError says which field is wrong (whatever the bytes are)."""
        if len(data) > MAX_MANIFEST_BYTES:  # ours are a few kB; every load, page and install reads it whole
            raise ValueError(f"manifest is {len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
        try:
            d = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"manifest is not valid JSON: {e}") from None
        except RecursionError:
            raise ValueError("manifest is nested too deeply") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"manifest format is {d.get('format') if isinstance(d, dict) else None!r}, expected {FORMAT!r}")
        for key in ("labels", "input", "preprocess"):
            if key not in d:
                raise ValueError(f"manifest has no {key!r}")
        for key in ("labels",):
            if not isinstance(d[key], list) or len(d[key]) > MAX_LABELS:
                raise ValueError(f"manifest {key!r} must be a list of at most {MAX_LABELS} entries")
        for key in ("input", "preprocess", "output", "source", "verification"):
            if key in d and not isinstance(d[key], dict | type(None)):
                raise ValueError(f"manifest {key!r} must be an object, got {type(d[key]).__name__}")
        verified = (d.get("verification") or {}).get("verified")
        if verified is not None and not isinstance(verified, bool):  # "false" must not fall back to the figures
            raise ValueError(f"manifest verification.verified must be true or false, got {verified!r}")
        version = d.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**53:
            raise ValueError(f"manifest 'version' must be a whole number >= 0, got {version!r}")
        try:
            labels = tuple(_label(x) for x in d["labels"])
            inp = InputSpec.from_dict(d["input"])
            prep = PreprocessSpec.from_dict(d["preprocess"])
        except (KeyError, TypeError, AttributeError, OverflowError) as e:
            raise ValueError(f"manifest field missing or mistyped: {type(e).__name__}: {e}") from None
        if not labels:
            raise ValueError("manifest has an empty label list")
        ids = [lb.id for lb in labels]
        if len(set(ids)) != len(ids):
            raise ValueError("manifest has duplicate label ids")
        decision = None
        if d.get("decision") is not None:
            from ecosorter.edge.decide.thresholds import check_decision_block

            decision = check_decision_block(d["decision"], ids)
        return cls(labels=labels, input=inp, preprocess=prep, output=dict(d.get("output") or {}),
                   source=dict(d.get("source") or {}), verification=dict(d.get("verification") or {}),
                   version=version, decision=decision)


MAX_LABELS = 1000
MAX_MANIFEST_BYTES = 1 << 20
MAX_NAME = 64
LABEL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _label(x: Any) -> Label:
    """A manifest label: an id usable as a folder and metric name, a display name that is plain text."""
    if not isinstance(x, dict):
        raise ValueError(f"manifest label {x!r} must be an object with 'id' and 'name'")
    i, name = x.get("id"), x.get("name", x.get("id"))
    if not isinstance(i, str) or not LABEL_ID.fullmatch(i):
        raise ValueError(f"manifest label id {i!r} must be 1-64 of A-Z a-z 0-9 _ -")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or any(c in name for c in "<>&\"'`") \
            or not name.isprintable():
        raise ValueError(f"manifest label {i!r}: display name {name!r} must be plain printable text of at most "
                         f"{MAX_NAME} characters, without < > & \" ' `")
    return Label(i, name)
