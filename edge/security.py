"""Signed remote commands: ed25519 over a canonical JSON, with a clock window and a nonce cache.

A signed command is one flat JSON object:

    {"action": "install_model", "url": "...", "sha256": "...",      <- the action and its arguments
     "bin_id": "bin7", "ts": 1764380000, "nonce": "k3J...", "sig": "<base64 ed25519>"}

`sig` signs the canonical JSON of every other key (sorted keys, no spaces, ASCII only), so the
action, its arguments, the bin it is meant for, the time and the nonce are all covered: a command
cannot be moved to another bin, replayed later (the timestamp leaves the clock window) or replayed
now (the nonce is remembered, on disk, until its timestamp has left the window).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from ecosorter.edge.durable import write_durably
from ecosorter.edge.errors import EcoSorterError

log = logging.getLogger("ecosorter.security")
ENVELOPE = ("bin_id", "ts", "nonce", "sig")
NONCE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
MAX_NONCES = 4096  # at the default rate limit a window holds far fewer; beyond it the floor rises


class AuthError(EcoSorterError):
    """A command that is not signed, not signed by a configured key, stale, replayed or misaddressed."""


def decode_public_key(text: str, key: str = "model.public_key") -> bytes:
    """Base64 of a raw 32-byte ed25519 public key; ValueError names the config key."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{key}: not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{key}: {len(raw)} bytes after base64; an ed25519 public key is 32")
    return raw


def canonical(cmd: dict) -> bytes:
    """The exact bytes that are signed: every key but `sig`, sorted, compact, ASCII."""
    body = {k: v for k, v in cmd.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def new_keypair() -> tuple[str, str]:
    """(private, public) as base64 of the raw 32-byte keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    k = Ed25519PrivateKey.generate()
    priv = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(priv).decode(), base64.b64encode(pub).decode()


def sign_file(private_key_b64: str, content: bytes) -> bytes:
    """The raw ed25519 signature `ecosorter model install --signature` checks against model.public_key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_key_b64.strip(), validate=True)).sign(content)


def sign_command(private_key_b64: str, action: str, args: dict, bin_id: str,
                 ts: float | None = None, nonce: str | None = None) -> dict:
    """A signed command ready to publish on <prefix>/<bin_id>/cmd (what `ecosorter sign-command` prints)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = base64.b64decode(private_key_b64.strip(), validate=True)
    clash = set(args) & {"action", *ENVELOPE}
    if clash:
        raise ValueError(f"argument names reserved for the envelope: {', '.join(sorted(clash))}")
    cmd = {"action": action, **args, "bin_id": bin_id, "ts": int(time.time() if ts is None else ts),
           "nonce": nonce or secrets.token_urlsafe(16)}
    cmd["sig"] = base64.b64encode(Ed25519PrivateKey.from_private_bytes(raw).sign(canonical(cmd))).decode()
    return cmd


class NonceCache:
    """Nonces seen inside the clock window, persisted (atomically) so a restart forgets none.

    Entries older than the window are dropped: their commands are refused as stale anyway. If an
    attacker with a valid key fills the cache, the oldest entries go and `floor` rises to their
    timestamp, so nothing older than what was dropped is accepted: it fails closed, never open.
    """

    def __init__(self, path: Path, window_s: float):
        self.path, self.window = Path(path), window_s
        self.floor = 0.0
        self.seen: dict[str, float] = {}
        self._lock = threading.Lock()
        try:
            d = json.loads(self.path.read_text())
            self.floor = float(d.get("floor", 0.0))
            self.seen = {str(k): float(v) for k, v in dict(d.get("seen", {})).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as e:
            # a damaged cache could let a replay through: refuse everything up to now instead
            log.error("nonce cache %s unreadable (%s); refusing commands signed before now", self.path, e)
            self.floor = time.time()

    def check_and_add(self, nonce: str, ts: float, now: float) -> None:
        with self._lock:
            if ts <= self.floor:
                raise AuthError(f"timestamp {ts:.0f} is not after the replay floor {self.floor:.0f}: refused")
            if nonce in self.seen:
                raise AuthError(f"nonce {nonce!r} was already used: replay refused")
            self.seen = {n: t for n, t in self.seen.items() if t >= now - self.window}
            while len(self.seen) >= MAX_NONCES:
                oldest = min(self.seen, key=self.seen.__getitem__)
                self.floor = max(self.floor, self.seen.pop(oldest))
            self.seen[nonce] = ts
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_durably(self.path, json.dumps({"floor": self.floor, "seen": self.seen}).encode(), 0o600)
            except OSError as e:
                del self.seen[nonce]  # not remembered = could be replayed after a restart: refuse
                raise AuthError(f"cannot record the nonce in {self.path} ({e.strerror or e}): refused") from None


class Verifier:
    """Checks the envelope and signature of a command for this bin."""

    def __init__(self, public_keys: Iterable[bytes], bin_id: str, nonce_file: Path, window_s: float = 300.0,
                 clock=time.time):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from ecosorter.edge.model.trust import key_id

        raw = list(public_keys)
        self.keys = [Ed25519PublicKey.from_public_bytes(k) for k in raw]
        self.key_ids = [key_id(k) for k in raw]
        self.bin_id, self.window, self.clock = bin_id, window_s, clock
        self.nonces = NonceCache(nonce_file, window_s)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def signature_ok(self, cmd: dict) -> bool:
        """Addressed to this bin, inside the clock window and signed by a configured key; the
        nonce cache is neither read nor written (no disk I/O: this runs on the network thread)."""
        try:
            self._check(cmd)
        except (AuthError, KeyError, TypeError, ValueError, binascii.Error):
            return False
        return True

    def verify(self, cmd: dict) -> str:
        """Check a command; the id of the key it verified with (edge/model/trust.py's key_id)."""
        kid = self._check(cmd)
        self.nonces.check_and_add(cmd["nonce"], float(cmd["ts"]), self.clock())
        return kid

    def _check(self, cmd: dict) -> str:
        if not self.keys:
            raise AuthError("no command key configured (model.public_key): signed commands are off")
        missing = [k for k in ENVELOPE if k not in cmd]
        if missing:
            raise AuthError(f"unsigned command: missing {', '.join(missing)}")
        if cmd["bin_id"] != self.bin_id:
            raise AuthError(f"bin_id {cmd['bin_id']!r} is not this bin ({self.bin_id!r}): refused")
        ts, now = float(cmd["ts"]), self.clock()
        if not math.isfinite(ts) or abs(now - ts) > self.window:
            raise AuthError(f"timestamp {ts:.0f} is {now - ts:+.0f} s from this bin's clock; the window is "
                            f"{self.window:.0f} s: stale command refused")
        sig = base64.b64decode(cmd["sig"])  # the parser checked it is base64 of 64 bytes
        body = canonical(cmd)
        kid = next((k for key, k in zip(self.keys, self.key_ids, strict=True) if _verifies(key, sig, body)), None)
        if kid is None:
            raise AuthError("signature does not verify with any configured key: refused")
        return kid


def _verifies(key, sig: bytes, body: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(sig, body)
        return True
    except InvalidSignature:
        return False

