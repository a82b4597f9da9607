"""One trust rule for every way a model arrives (CLI, MQTT, fleet), and what it says about a model.

`check_signature` is the rule: a model is installed only when

- its bytes verify with an ed25519 key from the config (`model.public_key` and `model.public_keys`
  alike), given as a signature file, or
- its sha256 came in a remote command that verified with such a key (`command_key`), or
- the operator installs it on the bin, as root, explicitly unsigned (`allow_unsigned`, the CLI's
  `--allow-unsigned`; never over MQTT). That is logged, recorded beside the model, and shown on
  the status page and in MQTT state until a signed model replaces it.

Anything else is refused, with where the keys were looked for: no config and no key is a
refusal, never a skipped check. `verification_status` says whether the conversion passed its
gate (`verified` in the manifest, written by ecosorter-convert); `check_verified` refuses a
`--force`d model unless `model.allow_unverified = true`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from ecosorter.edge.errors import EcoSorterError

log = logging.getLogger("ecosorter.models")


class ModelInstallError(EcoSorterError):
    """An install or rollback refused; `checks` are the lines of what was checked before it."""

    def __init__(self, message: str, checks: list[str] | None = None):
        super().__init__(message)
        self.checks = list(checks or [])


def key_id(raw: bytes) -> str:
    """A short, stable name of a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    name: str  # the config key it came from: model.public_key, model.public_keys[1]
    raw: bytes  # 32-byte ed25519 public key

    @property
    def id(self) -> str:
        return key_id(self.raw)


def keys_from_config(model_cfg: Any) -> tuple[TrustedKey, ...]:
    """Every key the config trusts: model.public_key and model.public_keys, one set."""
    from ecosorter.edge.security import decode_public_key

    named = [("model.public_key", model_cfg.public_key)] if model_cfg.public_key else []
    named += [(f"model.public_keys[{i}]", k) for i, k in enumerate(model_cfg.public_keys)]
    return tuple(TrustedKey(name, decode_public_key(text, name)) for name, text in named)


@dataclass(frozen=True)
class Signer:
    """Who vouched for a model's bytes: a key (by file signature or signed command), or nobody."""

    key_id: str = ""  # "" = unsigned
    key_name: str = ""
    how: str = "unsigned"  # "signature" | "command" | "unsigned"

    @property
    def signed(self) -> bool:
        return bool(self.key_id)

    def line(self) -> str:
        if self.how == "signature":
            return f"signature: ok, ed25519 key {self.key_id} ({self.key_name})"
        if self.how == "command":
            return f"signature: ok, its sha256 came in a command signed by key {self.key_id} ({self.key_name})"
        return "signature: NONE: installed unsigned (--allow-unsigned); shown as unsigned until a signed model replaces it"


def check_signature(content: bytes, source: object, keys: tuple[TrustedKey, ...] | list[TrustedKey], *,
                    signature: bytes | None = None, command_key: str | None = None,
                    allow_unsigned: bool = False, keys_from: str = "the config") -> Signer:
    """The one trust rule (see the module's docstring); ModelInstallError when it refuses.

    `command_key`: the id of the key that verified the remote command carrying this file's sha256
    (the caller has checked the sha256). `keys_from` says where keys were looked for, for messages.
    """
    by_id = {k.id: k for k in keys}
    if command_key is not None:
        if not command_key:
            raise ModelInstallError(f"model {source}: a remote install needs a signed command: refused")
        # the command processor verified it with one of the config's keys (edge/security.py's Verifier)
        known = by_id.get(command_key)
        return Signer(command_key, known.name if known else "a configured command key", "command")
    none_configured = (f"no key is configured (model.public_key / model.public_keys; looked in: {keys_from}; "
                       "make one with `ecosorter keys new`)")
    if signature is not None:
        if not keys:
            raise ModelInstallError(f"model {source}: a signature was given but {none_configured}: "
                                    "it cannot be checked: refused")
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        for k in keys:
            try:
                Ed25519PublicKey.from_public_bytes(k.raw).verify(signature, content)
                return Signer(k.id, k.name, "signature")
            except (InvalidSignature, ValueError):
                continue
        raise ModelInstallError(f"model {source}: ed25519 signature does not verify with any configured key "
                                f"({', '.join(f'{k.id} ({k.name})' for k in keys)}): refused")
    if allow_unsigned:
        log.warning("model %s: no signature, accepted UNSIGNED by --allow-unsigned%s", source,
                    "" if keys else f"; {none_configured}")
        return Signer()
    if not keys:
        raise ModelInstallError(f"model {source}: not signed, and {none_configured}: nothing to check it "
                                "against: refused. Configure the key and give --signature FILE "
                                "(`ecosorter keys sign`), or install it knowingly unsigned with --allow-unsigned")
    raise ModelInstallError(f"model {source}: a signature is required (keys {', '.join(k.id for k in keys)} "
                            f"configured; {keys_from}): give --signature FILE (`ecosorter keys sign`), "
                            "or install it knowingly unsigned with --allow-unsigned: refused")


# --------------------------------------------------------------------------- verification at conversion

def verification_status(manifest: Any) -> tuple[bool | None, str]:
    """(verified, one line of figures) from the manifest ecosorter-convert wrote.

    `verified` is written by the converter (false: written with --force after a failed gate). A
    manifest from before the flag is judged by its own figures (agreement against its minimum).
    None: no figures at all (a foreign .tflite given --labels/--preprocess): nothing to judge, said.
    """
    v = manifest.verification if manifest is not None else {}
    if not v:
        return None, "none recorded (not made by ecosorter-convert)"
    figures = verification_figures(v)
    verified = v.get("verified")
    if not isinstance(verified, bool):
        agreement, minimum = v.get("agreement"), v.get("min_agreement")
        verified = isinstance(agreement, int | float) and isinstance(minimum, int | float) and agreement >= minimum
    failed = v.get("failed") if not verified else None
    why = f" ({'; '.join(map(str, failed))})" if isinstance(failed, list) and failed else ""
    return verified, ("passed at conversion: " if verified else "FAILED at conversion (verified: false)") \
        + ("" if verified else f"{why}: ") + figures


def points(x: float) -> str:
    """A signed figure in points, never "-0.0": rounded first, + 0.0 (a change of -0.0004 is "+0.0")."""
    return f"{round(x, 1) + 0.0:+.1f}"


def verification_figures(v: dict) -> str:
    def pct(key: str) -> str | None:
        x = v.get(key)
        return f"{100 * x:.1f}%" if isinstance(x, int | float) and not isinstance(x, bool) else None

    def pts(key: str) -> str | None:
        x = v.get(key)
        return f"{points(100 * x)} pt" if isinstance(x, int | float) and not isinstance(x, bool) else None

    parts = [f"{v['images']} images" if isinstance(v.get("images"), int) else None]
    if pct("agreement"):
        parts.append(f"agreement {pct('agreement')}" + (f" (min {pct('min_agreement')})" if pct("min_agreement") else ""))
    if pct("keras_accuracy") or pct("tflite_accuracy"):
        parts.append(f"accuracy keras {pct('keras_accuracy') or '-'} / tflite {pct('tflite_accuracy') or '-'}")
    if pts("correct_routing_change"):
        parts.append(f"correct routing {pts('correct_routing_change')}")
    if pts("contamination_change"):
        parts.append(f"contamination {pts('contamination_change')}")
    return ", ".join(p for p in parts if p) or "no figures"


def decision_summary(manifest: Any) -> str:
    """The model's own decision rule in one line (its manifest's `decision` block, ecosorter-convert
    --contamination): budget, guarantee, threshold family, photos; or that it carries none."""
    d = manifest.decision if manifest is not None else None
    if not d:
        return "none in the model: the config's decision.threshold (default 0.55) decides for every class"

    def num(key: str) -> Any:
        x = d.get(key)
        return x if isinstance(x, int | float) and not isinstance(x, bool) else None

    budget, n, fit, cert = num("budget"), num("n"), num("n_fit"), num("n_certify")
    parts = [f"contamination budget {100 * budget:g}%" if budget is not None else "budget ?",
             f"{d.get('method', '?')}: {d.get('guarantee', 'no guarantee recorded')}",
             f"thresholds {d.get('family', '?')}",
             f"n {n if n is not None else '?'}" + (f" ({fit} fit, {cert} certify)" if fit is not None else "")]
    right, fb = num("routed_right"), num("fallback_share")
    if right is not None and fb is not None:
        parts.append(f"on the certify photos routed right {100 * right:.1f}%, fallback {100 * fb:.1f}%")
    if d.get("feasible") is False:
        parts.append("NOT CERTIFIABLE (every item uncertain)")
    return "; ".join(parts)


def check_verified(manifest: Any, source: object, allow_unverified: bool) -> str:
    """The verification line; ModelInstallError for a model that failed its gate unless allowed."""
    ok, line = verification_status(manifest)
    if ok is not False:
        return f"verification: {line}"
    if not allow_unverified:
        raise ModelInstallError(f"model {source}: verification {line}; refused: install a model that passed "
                                "its gate, or set model.allow_unverified = true in the config to run it anyway")
    log.warning("model %s: unverified (%s), allowed by model.allow_unverified", source, line)
    return f"verification: {line}; ALLOWED by model.allow_unverified = true"


def version_line(version: int, running: int, allow_downgrade: bool, has_running: bool) -> str:
    if not has_running:
        return f"version: {version} (no model installed before)"
    if version > running:
        return f"version: {version} > running {running}: upgrade"
    if version == running:
        return f"version: {version} = running {running}"
    return f"version: {version} < running {running}: DOWNGRADE allowed by --allow-downgrade" if allow_downgrade \
        else f"version: {version} < running {running}"


# --------------------------------------------------------------------------- the running model, for the page

def describe_running(model: Any, store: Any, allow_unverified: bool) -> dict:
    """What the page and MQTT state say about the model the bin sorts with (refuses an unverified one
    unless allowed): its version, who signed it (from the install record), its verification."""
    from ecosorter.edge.model.loader import DEMO_MODEL

    line = check_verified(model.manifest, model.path, allow_unverified)
    verified, _ = verification_status(model.manifest)
    info: dict[str, Any] = {"sha256": model.sha256, "version": model.manifest.version,
                            "source": str(model.manifest.source.get("file", "")), "verified": verified,
                            "unverified_allowed": verified is False, "verification": line.split(": ", 1)[1],
                            "signed": False, "unsigned": True, "key_id": "", "trust": ""}
    path = model.path.resolve()
    if store is not None and path.parent == store.dir.resolve() and path.name == f"sha-{model.sha256}.tflite":
        record = store.record(model.sha256) or {}
        if record.get("signed"):
            info.update(signed=True, unsigned=False, key_id=str(record.get("key_id", "")),
                        trust=f"signed by key {record.get('key_id', '?')} ({record.get('key_name', '')})")
        else:
            info["trust"] = ("UNSIGNED: installed with --allow-unsigned" if record else
                             "UNSIGNED: no install record (installed before records were kept)")
    elif path == DEMO_MODEL.resolve():
        info.update(unsigned=False, trust="the bundled demo model (ships with the software)")
    else:
        info["trust"] = "UNSIGNED: model.path, not installed through `ecosorter model install`"
    return info
