"""Load a .tflite model with its manifest into a runtime, refusing anything inconsistent."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ecosorter.edge.backends import Classifier, open_classifier
from ecosorter.edge.errors import BackendError, ModelError
from ecosorter.edge.model.manifest import MANIFEST_NAME, Label, Manifest
from ecosorter.edge.model.tflite_file import TFLiteFormatError, read_metadata
from ecosorter.edge.preprocess.spec import PreprocessSpec

DEMO_MODEL = Path(__file__).resolve().parent.parent / "demo" / "demo_int8.tflite"
CONTENT_NAME = re.compile(r"sha-([0-9a-f]{64})\.tflite")  # the store's content-addressed copies


@dataclass
class LoadedModel:
    path: Path
    sha256: str
    manifest: Manifest
    classifier: Classifier
    size_bytes: int

    @property
    def labels(self) -> tuple[Label, ...]:
        return self.manifest.labels

    def close(self) -> None:
        self.classifier.close()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(content: bytes, path: object = "<bytes>") -> Manifest | None:
    """The embedded manifest, None when the file has none; ModelError when it is not TFLite."""
    try:
        entries = read_metadata(content)
    except TFLiteFormatError as e:
        raise ModelError(path, str(e)) from None
    if MANIFEST_NAME not in entries:
        return None
    try:
        return Manifest.from_json(entries[MANIFEST_NAME])
    except ValueError as e:
        raise ModelError(path, f"embedded manifest is invalid: {e}") from None


def _content_name(path: Path) -> re.Match | None:
    """The store's sha-<hash>.tflite name on the way to the file: a link planted in place of the store's
    copy (sha-<hash>.tflite -> elsewhere) must not hide that name from the check."""
    p = Path(path)
    for _ in range(16):
        named = CONTENT_NAME.fullmatch(p.name)
        if named or not p.is_symlink():
            return named
        p = p.parent / os.readlink(p)
    return CONTENT_NAME.fullmatch(p.resolve().name)


def load_model(path: str | Path | None = None, backend: str = "auto", num_threads: int | None = None,
               labels: list[Label] | None = None, preprocess: PreprocessSpec | None = None) -> LoadedModel:
    """Load `path` (default: the bundled demo model).

    A foreign .tflite without an EcoSorter manifest needs `labels` and `preprocess` given
    explicitly; given ones also override an embedded manifest.
    """
    path = Path(path) if path is not None else DEMO_MODEL
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(path, "file not found") from None
    except OSError as e:
        raise ModelError(path, f"cannot read: {e.strerror or e}") from None
    sha256 = hashlib.sha256(content).hexdigest()
    named = _content_name(path)
    if named and named.group(1) != sha256:  # an installed file changed on disk since it was verified
        raise ModelError(path, f"its content hashes to {sha256[:12]}..., not the {named.group(1)[:12]}... in its "
                               f"name {named.group(0)}: the installed file was changed or damaged")
    manifest = read_manifest(content, path)
    try:
        classifier = open_classifier(content, backend, num_threads)
    except BackendError as e:
        raise ModelError(path, str(e)) from None
    try:
        manifest = _reconcile(path, manifest, classifier, labels, preprocess)
    except ModelError:
        classifier.close()
        raise
    return LoadedModel(path=path, sha256=sha256, manifest=manifest,
                       classifier=classifier, size_bytes=len(content))


def _reconcile(path: Path, manifest: Manifest | None, classifier: Classifier,
               labels: list[Label] | None, preprocess: PreprocessSpec | None) -> Manifest:
    if manifest is None:
        if labels is None or preprocess is None:
            raise ModelError(path, "has no EcoSorter manifest (was it made by ecosorter-convert?); "
                                   "for a foreign .tflite give both --labels FILE and --preprocess "
                                   "(e.g. caffe-bgr-nearest)")
        manifest = Manifest(labels=tuple(labels), input=classifier.input, preprocess=preprocess,
                            source={"foreign": True})
    elif labels is not None or preprocess is not None:
        manifest = Manifest(labels=tuple(labels) if labels else manifest.labels,
                            input=manifest.input, preprocess=preprocess or manifest.preprocess,
                            output=manifest.output, source=manifest.source,
                            verification=manifest.verification, version=manifest.version,
                            decision=None if labels else manifest.decision)  # thresholds are per label
    if len(manifest.labels) != classifier.output_size:
        raise ModelError(path, f"{len(manifest.labels)} labels but the model has "
                               f"{classifier.output_size} outputs")
    declared, actual = manifest.input, classifier.input
    if (declared.height, declared.width, declared.dtype) != (actual.height, actual.width, actual.dtype):
        raise ModelError(path, f"manifest says input {declared.height}x{declared.width} {declared.dtype}, "
                               f"the model has {actual.height}x{actual.width} {actual.dtype}")
    # The tensor's own quantization is the truth the table must be built from.
    return Manifest(labels=manifest.labels, input=actual, preprocess=manifest.preprocess,
                    output=manifest.output, source=manifest.source, verification=manifest.verification,
                    version=manifest.version, decision=manifest.decision)
