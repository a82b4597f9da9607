"""Installed models: verify, test, swap atomically, keep the previous one, roll back.

    state_dir/models/
        current.tflite   -> sha-<hash>.tflite   (symlink: swapped with one atomic rename)
        previous.tflite  -> sha-<hash>.tflite
        sha-<hash>.tflite                       (content-addressed copies, fsynced)
        incoming/                               (the only folder MQTT file references may name)
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ecosorter.edge.errors import EcoSorterError, ModelError

log = logging.getLogger("ecosorter.models")
MAX_MODEL_BYTES = 512 * 1024 * 1024
SELF_TEST_IMAGE = Path(__file__).resolve().parent.parent / "demo" / "samples"


class ModelInstallError(EcoSorterError):
    pass


@dataclass(frozen=True)
class InstallResult:
    sha256: str
    path: Path
    labels: list[str]
    self_test: str  # "label confidence" on the self-test image


class ModelStore:
    def __init__(self, state_dir: str | Path, expected_labels: list[str] | None = None,
                 public_key: bytes | None = None):
        self.dir = Path(state_dir) / "models"
        self.incoming = self.dir / "incoming"
        self.expected_labels = expected_labels  # a bin's compartments are wired for these
        self.public_key = public_key  # raw 32-byte ed25519 key; None = signatures not required

    @property
    def current(self) -> Path:
        return self.dir / "current.tflite"

    @property
    def previous(self) -> Path:
        return self.dir / "previous.tflite"

    def resolve_reference(self, ref: str) -> Path:
        """A file named by a remote command must be inside models/incoming/: no traversal."""
        base = self.incoming.resolve()
        target = (base / ref).resolve()
        if base != target.parent and base not in target.parents:
            raise ModelInstallError(f"file {ref!r} is outside {self.incoming}; put it there first")
        return target

    def fetch(self, url: str, timeout: float = 60) -> Path:
        if not url.startswith(("https://", "http://")):
            raise ModelInstallError(f"url {url!r}: only http(s) URLs are fetched")
        self.incoming.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.incoming, suffix=".download")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310
                total = 0
                while chunk := r.read(1 << 20):
                    total += len(chunk)
                    if total > MAX_MODEL_BYTES:
                        raise ModelInstallError(f"url {url}: larger than {MAX_MODEL_BYTES >> 20} MB")
                    out.write(chunk)
        except (OSError, ValueError) as e:
            Path(tmp).unlink(missing_ok=True)
            raise ModelInstallError(f"url {url}: download failed: {e}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def install(self, source: str | Path, sha256: str | None = None, signature: bytes | None = None,
                backend: str = "auto") -> InstallResult:
        """Verify hash and signature, validate the manifest, test-load and classify, then swap."""
        source = Path(source)
        try:
            content = source.read_bytes()
        except OSError as e:
            raise ModelInstallError(f"model {source}: cannot read: {e.strerror or e}") from None
        digest = hashlib.sha256(content).hexdigest()
        if sha256 is not None and sha256.lower() != digest:
            raise ModelInstallError(f"model {source}: sha256 is {digest}, expected {sha256.lower()}: refused")
        if self.public_key is not None:
            self._check_signature(source, content, signature)
        result = self._test(source, content, digest, backend)
        self._swap(content, digest)
        log.info("installed model %s (%s)", digest[:12], result.self_test)
        return result

    def _check_signature(self, source: Path, content: bytes, signature: bytes | None) -> None:
        if signature is None:
            raise ModelInstallError(f"model {source}: a signature is required (model signing key configured)")
        try:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        except ImportError:
            raise ModelInstallError("signature checks need the cryptography package") from None
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, content)
        except (InvalidSignature, ValueError):
            raise ModelInstallError(f"model {source}: ed25519 signature does not verify: refused") from None

    def _test(self, source: Path, content: bytes, digest: str, backend: str) -> InstallResult:
        from ecosorter.edge.api import classify_image
        from ecosorter.edge.model.loader import load_model

        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe.tflite"
            probe.write_bytes(content)
            try:
                model = load_model(probe, backend)
            except ModelError as e:
                raise ModelInstallError(f"model {source}: {str(e).split(': ', 1)[-1]}") from None
            with model:
                labels = model.manifest.label_ids
                if self.expected_labels is not None and labels != self.expected_labels:
                    raise ModelInstallError(f"model {source}: labels {labels} differ from this bin's "
                                            f"{self.expected_labels}; refused")
                image = sorted(SELF_TEST_IMAGE.glob("*.jpg"))[0]
                p = classify_image(model, image)
                if not (0.98 <= sum(p.probabilities.values()) <= 1.02):
                    raise ModelInstallError(f"model {source}: self-test output is not a probability vector")
        return InstallResult(digest, self.dir / f"sha-{digest}.tflite", labels, f"{p.label} {p.confidence:.2f}")

    def _swap(self, content: bytes, digest: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / f"sha-{digest}.tflite"
        if not target.exists():
            _write_durably(target, content)
        old = os.readlink(self.current) if self.current.is_symlink() else None
        if old == target.name:
            return
        if old is not None:
            _symlink_atomically(self.previous, old)
        _symlink_atomically(self.current, target.name)
        self._prune()

    def rollback(self) -> str:
        if not self.previous.is_symlink():
            raise ModelInstallError(f"no previous model in {self.dir} to roll back to")
        prev, cur = os.readlink(self.previous), os.readlink(self.current) if self.current.is_symlink() else None
        _symlink_atomically(self.current, prev)
        if cur:
            _symlink_atomically(self.previous, cur)
        log.warning("rolled back to model %s", prev)
        return prev

    def _prune(self) -> None:
        keep = {os.readlink(p) for p in (self.current, self.previous) if p.is_symlink()}
        for f in self.dir.glob("sha-*.tflite"):
            if f.name not in keep:
                f.unlink(missing_ok=True)


def _write_durably(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _symlink_atomically(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
