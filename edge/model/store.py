"""Installed models: verify, test, swap atomically, keep the previous one, roll back.

    state_dir/models/
        current.tflite   -> sha-<hash>.tflite   (symlink: swapped with one atomic rename)
        previous.tflite  -> sha-<hash>.tflite
        sha-<hash>.tflite                       (content-addressed copies, fsynced)
        incoming/                               (the only folder MQTT file references may name)
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ecosorter.edge.durable import fsync_dir as _fsync_dir
from ecosorter.edge.durable import write_durably
from ecosorter.edge.errors import ModelError
from ecosorter.edge.model.trust import (
    ModelInstallError,
    Signer,
    TrustedKey,
    check_signature,
    check_verified,
    keys_from_config,
    version_line,
)

log = logging.getLogger("ecosorter.models")
MAX_MODEL_BYTES = 512 * 1024 * 1024
READ_TIMEOUT_S = 2.0  # per socket operation; the total is DownloadPolicy.timeout_s
SELF_TEST_IMAGE = Path(__file__).resolve().parent.parent / "demo" / "samples"


@dataclass(frozen=True)
class InstallResult:
    sha256: str
    path: Path
    labels: list[str]
    self_test: str  # "label confidence" on the self-test image
    version: int = 0  # the manifest's monotonic version
    checks: list[str] = field(default_factory=list)  # one line per check and its result, in order
    signer: Signer = field(default_factory=Signer)


@dataclass(frozen=True)
class DownloadPolicy:
    """From the config's model.* keys: where models may come from and how much they may cost."""

    hosts: tuple[str, ...] = ()  # "host" (default port) or "host:port"; empty = no downloads
    allow_http: bool = False
    max_bytes: int = 200_000_000
    timeout_s: float = 300.0
    incoming_quota: int = 600_000_000

    @classmethod
    def from_config(cls, m) -> DownloadPolicy:
        return cls(tuple(h.lower() for h in m.download_hosts), m.allow_http, int(m.max_download_mb * 1e6),
                   m.download_timeout_s, int(m.incoming_quota_mb * 1e6))


def _check_url(url: str, p: DownloadPolicy) -> tuple[str, int]:
    """Scheme and host:port against the policy, before any connection is made."""
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError as e:
        raise ModelInstallError(f"url {url!r}: {e}") from None
    schemes = ("https", "http") if p.allow_http else ("https",)
    if u.scheme not in schemes:
        raise ModelInstallError(f"url {url!r}: only {' or '.join(s + '://' for s in schemes)} URLs are fetched"
                                + ("" if p.allow_http else " (model.allow_http = true allows http)"))
    host = (u.hostname or "").lower()
    if not p.hosts:
        raise ModelInstallError(f"url {url!r}: model.download_hosts is empty: URL installs are off")
    default = 443 if u.scheme == "https" else 80
    if not ((port == default and host in p.hosts) or f"{host}:{port}" in p.hosts):
        raise ModelInstallError(f"url {url!r}: {host}:{port} is not in model.download_hosts: refused")
    if u.username or u.password:
        raise ModelInstallError(f"url {url!r}: credentials in URLs are not accepted")
    return host, port


def _check_size(url: str, size: int, limit: int, room: int) -> None:
    if size > limit:
        raise ModelInstallError(f"url {url}: more than model.max_download_mb = {limit / 1e6:g} MB: refused")
    if size > room:
        raise ModelInstallError(f"url {url}: models/incoming/ would exceed model.incoming_quota_mb: refused")


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return str(e) or type(e).__name__


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the same scheme, host and port (never https -> http, never ftp://)."""

    def __init__(self, url: str):
        self.origin = _origin(url)

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        if _origin(target) != self.origin:
            raise ModelInstallError(f"url {req.full_url}: redirect to {target!r} leaves "
                                    f"{self.origin[0]}://{self.origin[1]}:{self.origin[2]}: refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """One deadline for a whole request: connect, TLS, response headers, redirects and body. Each
    socket read alone has READ_TIMEOUT_S; a server sending a header line every second would still
    hold the worker for ever, so a watcher shuts the sockets down when the deadline passes (or
    `cancel` is set on shutdown), whatever they are waiting on."""

    def __init__(self, at: float, cancel: threading.Event | None):
        self.at, self.cancel = at, cancel
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="download deadline", daemon=True).start()

    def _watch(self) -> None:
        while not self._done.is_set():
            left = self.at - time.monotonic()
            if left <= 0 or (self.cancel is not None and self.cancel.is_set()):
                with self._lock:
                    self.expired = True
                    for sock in self._socks:
                        _shutdown(sock)
                return
            self._done.wait(min(left, 0.2))

    def watched(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                _shutdown(sock)
        return sock

    def close(self) -> None:
        self._done.set()

    def connection(self, base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        deadline = self

        class Connection(base):  # type: ignore[valid-type, misc]
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                self._create_connection = lambda *a, **k: deadline.watched(socket.create_connection(*a, **k))

        return Connection

    def handlers(self, context: ssl.SSLContext) -> list[urllib.request.BaseHandler]:
        deadline = self

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(deadline.connection(http.client.HTTPConnection), req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(deadline.connection(http.client.HTTPSConnection), req, context=self._context)

        return [HTTP(), HTTPS(context=context)]


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
    except OSError:
        pass


def _origin(url: str) -> tuple[str, str, int | None]:
    try:
        u = urllib.parse.urlsplit(url)
        return u.scheme, (u.hostname or "").lower(), u.port or {"https": 443, "http": 80}.get(u.scheme)
    except ValueError:
        return "", "", None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class ModelStore:
    def __init__(self, state_dir: str | Path, expected_labels: list[str] | None = None,
                 public_key: bytes | None = None, downloads: DownloadPolicy | None = None, *,
                 keys: Iterable[TrustedKey] = (), allow_unverified: bool = False,
                 label_check: Callable[[list[str]], list[str]] | None = None, keys_from: str = "the config"):
        self.dir = Path(state_dir) / "models"
        self.incoming = self.dir / "incoming"
        self.expected_labels = expected_labels  # a bin's compartments are wired for these
        # the keys a model's signature is checked against (edge/model/trust.py: one rule for all)
        self.keys = ((TrustedKey("model.public_key", public_key),) if public_key is not None else ()) + tuple(keys)
        self.keys_from = keys_from
        self.allow_unverified = allow_unverified  # model.allow_unverified: --force'd conversions may run
        self.label_check = label_check  # the bin's config against a model's labels: error lines
        # the bin's [decision] against a model's thresholds (a budget it cannot keep): error lines. Checked
        # here, or the bin would install it, refuse the live swap and then fail at every start
        self.decision_check: Callable[[Any], list[str]] | None = None
        self.downloads = downloads or DownloadPolicy()
        for stale in self.incoming.glob("*.download"):  # a download cut short by a kill or power cut
            stale.unlink(missing_ok=True)

    @classmethod
    def from_config(cls, cfg, state_dir: str | Path | None = None, keys_from: str = "the config") -> ModelStore:
        """The store as the config sets it up: keys, download policy, unverified models, label rules."""
        from ecosorter.edge.hardware.check import label_errors

        store = cls(state_dir or cfg.record.state_dir, downloads=DownloadPolicy.from_config(cfg.model),
                    keys=keys_from_config(cfg.model), allow_unverified=cfg.model.allow_unverified,
                    label_check=lambda ids: [str(e) for e in label_errors(cfg, ids)], keys_from=keys_from)
        store.decision_check = lambda m: _decision_errors(cfg, m)
        return store

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

    def fetch(self, url: str, sha256: str | None = None, cancel: threading.Event | None = None) -> Path:
        """Download into incoming/ under the download policy; the partial file is deleted on any refusal.

        Streamed to disk while hashing (never whole in memory); every read waits at most
        READ_TIMEOUT_S and the whole download at most `timeout_s`, so a server sending a byte
        every few seconds is cut off, and `cancel` (set on shutdown) ends it within one read.
        """
        p = self.downloads
        host, port = _check_url(url, p)
        self.incoming.mkdir(parents=True, exist_ok=True)
        room = p.incoming_quota - self._incoming_bytes()
        deadline = time.monotonic() + p.timeout_s
        whole = _Deadline(deadline, cancel)
        opener = urllib.request.build_opener(_SameOriginRedirects(url), *whole.handlers(ssl.create_default_context()))
        fd, tmp = tempfile.mkstemp(dir=self.incoming, suffix=".download")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, opener.open(url, timeout=READ_TIMEOUT_S) as r:
                declared = r.headers.get("Content-Length")
                if declared is not None and declared.isdigit():
                    _check_size(url, int(declared), p.max_bytes, room)
                total = 0
                while True:
                    if cancel is not None and cancel.is_set():
                        raise ModelInstallError(f"url {url}: download cancelled (shutting down)")
                    if time.monotonic() > deadline:
                        raise ModelInstallError(f"url {url}: took longer than model.download_timeout_s "
                                                f"= {p.timeout_s:g} s: refused")
                    chunk = r.read1(1 << 16)  # one socket read: a slow drip cannot hold it past a read
                    if not chunk:
                        if whole.expired:  # the watcher shut the socket: that is not the end of the file
                            raise OSError("deadline")
                        break
                    total += len(chunk)
                    _check_size(url, total, p.max_bytes, room)
                    digest.update(chunk)
                    out.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256.lower():
                raise ModelInstallError(f"url {url}: content does not match the sha256 in the command: refused")
        except ModelInstallError:
            Path(tmp).unlink(missing_ok=True)
            raise
        except (OSError, ValueError, http.client.HTTPException) as e:
            Path(tmp).unlink(missing_ok=True)
            if whole.expired and cancel is not None and cancel.is_set():
                raise ModelInstallError(f"url {url}: download cancelled (shutting down)") from None
            if whole.expired:
                raise ModelInstallError(f"url {url}: took longer than model.download_timeout_s "
                                        f"= {p.timeout_s:g} s (the whole request, headers too): refused") from None
            raise ModelInstallError(f"url {url}: download failed: {_reason(e)}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            whole.close()
        log.info("downloaded %s from %s:%d (%d bytes)", Path(tmp).name, host, port, total)
        return Path(tmp)

    def _incoming_bytes(self) -> int:
        total = 0
        for f in self.incoming.glob("*"):
            try:
                total += f.stat().st_size
            except OSError:
                pass
        return total

    def install(self, source: str | Path, sha256: str | None = None, signature: bytes | None = None,
                backend: str = "auto", authenticated: bool = False, allow_downgrade: bool = False, *,
                command_key: str | None = None, allow_unsigned: bool = False, origin: str = "") -> InstallResult:
        """Check everything, test-load and classify, then swap; one line per check in `checks`.

        The signature follows the one trust rule (edge/model/trust.py): a `signature` verifying
        with a configured key; or `authenticated` (the sha256 came in a command signed with the
        configured key `command_key`); or `allow_unsigned` (root's explicit local --allow-unsigned,
        never a remote command). A manifest `version` below the running model's is refused unless
        `allow_downgrade`; a conversion that failed its gate unless model.allow_unverified.
        ModelInstallError carries the lines checked before the refusal.
        """
        source = Path(source)
        checks: list[str] = []
        try:
            size = source.stat().st_size
            if size > MAX_MODEL_BYTES:
                raise ModelInstallError(f"model {source}: {size >> 20} MB is larger than {MAX_MODEL_BYTES >> 20} MB")
            digest = _sha256_file(source)  # before reading it whole: a wrong file is refused cheaply
            if sha256 is not None and sha256.lower() != digest:
                raise ModelInstallError(f"model {source}: sha256 is {digest}, expected {sha256.lower()}: refused")
            content = source.read_bytes()
        except OSError as e:
            raise ModelInstallError(f"model {source}: cannot read: {e.strerror or e}") from None
        if hashlib.sha256(content).hexdigest() != digest:
            raise ModelInstallError(f"model {source}: changed while it was being read: refused")
        try:
            if authenticated and sha256 is not None:
                signer = check_signature(content, source, self.keys, command_key=command_key or self._only_key(),
                                         keys_from=self.keys_from)
            else:
                signer = check_signature(content, source, self.keys, signature=signature,
                                         allow_unsigned=allow_unsigned, keys_from=self.keys_from)
            checks.append(signer.line())
            checks.append(f"sha256: {digest}" + (" (matches the expected sha256)" if sha256 else ""))
            result = self._test(source, content, digest, backend, checks, allow_downgrade)
        except ModelInstallError as e:
            e.checks = checks + e.checks
            raise
        self._swap(content, digest)
        result = InstallResult(result.sha256, result.path, result.labels, result.self_test, result.version,
                               checks, signer)
        self._write_record(result, source, origin)
        # one line for the journal (an install from MQTT prints nothing); each check is in the record
        signed = f"signed by key {signer.key_id} ({signer.how})" if signer.signed else "unsigned"
        log.info("installed model %s version %d from %s: %s, self-test %s; the checks: %s", digest[:12],
                 result.version, origin or source.name, signed, result.self_test, self.record_path(digest))
        return result

    def _only_key(self) -> str:
        """An authenticated install from a caller that did not say which key: only unambiguous with one."""
        if len(self.keys) != 1:
            raise ModelInstallError("an authenticated install must name the key that signed its command")
        return self.keys[0].id

    def running_version(self) -> int:
        """The manifest `version` of current.tflite; 0 without one (or without a current model)."""
        from ecosorter.edge.model.loader import _content_name, read_manifest

        if not self.current.exists():
            return 0
        try:
            content = self.current.read_bytes()
            named = _content_name(self.current)
            if named and hashlib.sha256(content).hexdigest() != named.group(1):
                # changed on disk: not the model that was checked; its install record says what was
                v = (self.record(named.group(1)) or {}).get("version", 0)
                return v if isinstance(v, int) and not isinstance(v, bool) else 0
            manifest = read_manifest(content, self.current)
        except (OSError, ModelError):
            return 0
        return manifest.version if manifest is not None else 0

    def _test(self, source: Path, content: bytes, digest: str, backend: str, checks: list[str],
              allow_downgrade: bool) -> InstallResult:
        """Manifest, labels, version and verification from the embedded manifest, then a real self-test."""
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
                m = model.manifest
                labels = m.label_ids
                if self.expected_labels is not None and labels != self.expected_labels:
                    raise ModelInstallError(f"model {source}: labels {labels} differ from this bin's "
                                            f"{self.expected_labels}; refused")
                problems = self.label_check(labels) if self.label_check is not None else []
                if not problems and self.decision_check is not None:
                    problems = self.decision_check(m)
                if problems:
                    raise ModelInstallError(f"model {source}: its labels do not fit this bin's config: "
                                            + "; ".join(problems) + ": refused")
                checks.append(f"manifest: ok, {len(labels)} labels {','.join(labels)}: "
                              + ("same as the running model" if self.expected_labels is not None else
                                 "no model installed to compare")
                              + (", fit the bin's config" if self.label_check is not None else ""))
                running, has_running = self.running_version(), self.current.exists()
                if m.version < running and not allow_downgrade:
                    raise ModelInstallError(
                        f"model {source}: version {m.version} is older than the running version {running}: "
                        "downgrade refused (a signed rollback_model naming it, or a local install with "
                        "--allow-downgrade; versions default to the conversion's UTC time, YYYYMMDDhhmmss, "
                        "so an explicit --model-version must be above the running one)")
                checks.append(version_line(m.version, running, allow_downgrade, has_running))
                checks.append(check_verified(m, source, self.allow_unverified))
                image = sorted(SELF_TEST_IMAGE.glob("*.jpg"))[0]
                p = classify_image(model, image)
                if not (0.98 <= sum(p.probabilities.values()) <= 1.02):
                    raise ModelInstallError(f"model {source}: self-test output is not a probability vector")
                self_test = f"{p.label} {p.confidence:.2f}"
                checks.append(f"self-test: ok, {image.name} -> {self_test} (probabilities sum to 1)")
        return InstallResult(digest, self.dir / f"sha-{digest}.tflite", labels, self_test, m.version)

    # ------------------------------------------------------------ what each installed model was
    def record_path(self, digest: str) -> Path:
        return self.dir / f"sha-{digest}.json"

    def _write_record(self, r: InstallResult, source: Path, origin: str) -> None:
        """Beside sha-<hash>.tflite: who signed it, what was checked; read by `model list` and the page."""
        record = {"sha256": r.sha256, "installed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "installed_from": source.name, "origin": origin, "signed": r.signer.signed,
                  "key_id": r.signer.key_id, "key_name": r.signer.key_name, "how": r.signer.how,
                  "version": r.version, "checks": r.checks}
        try:
            write_durably(self.record_path(r.sha256), json.dumps(record, indent=1).encode())
        except OSError as e:  # the model is installed; without its record it shows as "not recorded"
            log.error("cannot write the install record %s: %s", self.record_path(r.sha256), e)

    def record(self, digest: str) -> dict | None:
        """The install record of sha-<digest>.tflite; None when there is none (or it is unreadable)."""
        try:
            d = json.loads(self.record_path(digest).read_text())
            return d if isinstance(d, dict) else None
        except (OSError, ValueError):
            return None

    def installed(self, name: str) -> str | None:
        """The sha256 that current/previous points to, None when the link is not there."""
        link = self.dir / f"{name}.tflite"
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        return target[4:-7] if target.startswith("sha-") and target.endswith(".tflite") else None

    def _swap(self, content: bytes, digest: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / f"sha-{digest}.tflite"
        # a copy already there is reused only if it is that content: one changed on disk (or a link
        # planted in its place) is written again, so installing the right model repairs it
        if target.is_symlink() or not target.is_file() or _sha256_file(target) != digest:
            write_durably(target, content)
        old = os.readlink(self.current) if self.current.is_symlink() else None
        if old == target.name:
            return
        if old is not None:
            _symlink_atomically(self.previous, old)
        _symlink_atomically(self.current, target.name)
        self._prune()

    def check_current(self) -> None:
        """current.tflite must be the store's own link to one of its sha-<hash>.tflite copies (whose
        content the loader checks against the name): re-pointed elsewhere, nobody checked that model."""
        from ecosorter.edge.model.loader import CONTENT_NAME

        if not self.current.is_symlink():
            raise ModelError(self.current, "is not the store's link to an installed model (replaced outside "
                                           "`ecosorter model install`)")
        target = os.readlink(self.current)
        if not CONTENT_NAME.fullmatch(target):
            raise ModelError(self.current, f"points to {target!r}, not an installed sha-<hash>.tflite in {self.dir}")

    def rollback(self, sha256: str | None = None) -> str:
        """Back to the previous model; with `sha256` (a signed remote rollback) only if it is that one."""
        if not self.previous.is_symlink() and not self.current.is_symlink():
            raise ModelInstallError(f"no model is installed in {self.dir}, so none to roll back to (the bin runs "
                                    "model.path, else the bundled demo): `ecosorter model install` installs one")
        if not self.previous.is_symlink():
            # after the first install there is none: say the two ways on from there
            raise ModelInstallError(f"no previous model in {self.dir} to roll back to (none was installed before "
                                    "the running one): install another with `ecosorter model install`, or set "
                                    "model.path in the config to the .tflite to run instead")
        prev, cur = os.readlink(self.previous), os.readlink(self.current) if self.current.is_symlink() else None
        if sha256 is not None and prev != f"sha-{sha256.lower()}.tflite":
            raise ModelInstallError(f"the previous model is {prev}, not sha-{sha256.lower()[:12]}...: "
                                    "rollback refused")
        self._check_rollback_target(self.dir / prev)
        _symlink_atomically(self.current, prev)
        if cur and cur.startswith("sha-") and "/" not in cur:  # a link re-pointed elsewhere is not kept
            _symlink_atomically(self.previous, cur)
        log.warning("rolled back to model %s", prev)
        return prev

    def _check_rollback_target(self, path: Path) -> None:
        """Going back must not run a --force'd model the config does not allow."""
        from ecosorter.edge.model.loader import read_manifest

        try:
            manifest = read_manifest(path.read_bytes(), path)
        except (OSError, ModelError) as e:
            raise ModelInstallError(f"previous model {path.name}: cannot be read ({e}): rollback refused") from None
        check_verified(manifest, path.name, self.allow_unverified)

    def _prune(self) -> None:
        keep = {os.readlink(p) for p in (self.current, self.previous) if p.is_symlink()}
        for f in [*self.dir.glob("sha-*.tflite"), *self.dir.glob("sha-*.json")]:
            if f.with_suffix(".tflite").name not in keep:
                f.unlink(missing_ok=True)


def _decision_errors(cfg, manifest) -> list[str]:
    """The Voter's own rule (edge/decide/thresholds.py) for this config and the model's thresholds."""
    from ecosorter.edge.decide.thresholds import decision_rule
    from ecosorter.edge.errors import ConfigError

    try:
        decision_rule(cfg.decision, manifest.label_ids, manifest.decision)
    except ConfigError as e:
        return [str(e)]
    return []


def _symlink_atomically(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)
