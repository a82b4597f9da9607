"""Remote commands (MQTT <prefix>/<bin_id>/cmd): strict schema, authentication, rate limit, a worker.

    install_model   {"sha256", "url" | "file"}            always signed
    rollback_model  {"sha256"}  (the previous model's)     always signed
    flag            {"id"}                                 signed, or trusted (commands.trust_broker_for)
    label           {"id", "label", ["by"]}                signed, or trusted
    clear_fault     {["by"]}                               signed, or trusted

plus the envelope {"bin_id", "ts", "nonce", "sig"} of a signed command (see edge/security.py).

Nothing here runs on the sorting loop. The MQTT network thread only counts the message against
the rate limit and puts it on a bounded queue; one worker thread parses, authenticates and does
the slow work (download, hashing, test-load), and hands the loop a verified model path through
`request_swap`, which the loop applies between items. Every reply goes to <prefix>/<bin_id>/cmd/result;
no exception from any of it reaches the loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecosorter.edge.errors import EcoSorterError
from ecosorter.edge.security import ENVELOPE, AuthError, Verifier, decode_public_key

log = logging.getLogger("ecosorter.commands")
MAX_PAYLOAD = 4096  # the longest valid command is well under 3 kB


class CommandError(EcoSorterError, ValueError):
    """A command that does not fit its schema; the message names the field."""


# --------------------------------------------------------------------------- schema

def _text(pattern: str, what: str) -> Callable[[str, Any], Any]:
    rx = re.compile(pattern)

    def check(key: str, v: Any) -> Any:
        if not isinstance(v, str):
            raise CommandError(f"{key}: must be a string ({what}), got {type(v).__name__}")
        if not rx.fullmatch(v):
            raise CommandError(f"{key}: {v[:80]!r} is not {what}")
        return v
    return check


def _url(key: str, v: Any) -> str:
    v = _text(r"[\x21-\x7e]{1,2048}", "a URL of at most 2048 printable ASCII characters")(key, v)
    if not v.startswith(("https://", "http://")):
        raise CommandError(f"{key}: {v[:80]!r} must start with https://")
    return v


def _timestamp(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 < v < 1e11:
        raise CommandError(f"{key}: must be a Unix time in seconds, got {v!r}")
    return v


def _signature(key: str, v: Any) -> str:
    _text(r"[A-Za-z0-9+/=]{86,90}", "base64 of a 64-byte ed25519 signature")(key, v)
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise CommandError(f"{key}: not base64") from None
    if len(raw) != 64:
        raise CommandError(f"{key}: {len(raw)} bytes; an ed25519 signature is 64")
    return v


SHA256 = _text(r"[0-9a-fA-F]{64}", "64 hex digits")
EVENT_ID = _text(r"[A-Za-z0-9]{1,64}", "an event id (letters and digits)")
LABEL = _text(r"[A-Za-z0-9_-]{1,64}", "a label id")
WHO = _text(r"[^\x00-\x1f\x7f<>&\"'`]{1,64}", "a name of at most 64 plain characters")
FILE = _text(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", "a file name in models/incoming/ (no folders)")
ENVELOPE_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "bin_id": _text(r"[A-Za-z0-9_-]{1,64}", "a bin id"),
    "ts": _timestamp,
    "nonce": _text(r"[A-Za-z0-9_-]{8,64}", "8-64 of A-Z a-z 0-9 _ -"),
    "sig": _signature,
}


@dataclass(frozen=True)
class Action:
    required: dict[str, Callable[[str, Any], Any]] = field(default_factory=dict)
    optional: dict[str, Callable[[str, Any], Any]] = field(default_factory=dict)
    one_of: tuple[str, ...] = ()  # exactly one of these optional keys
    always_signed: bool = False


# The one registry: the parser, the docs and config checks all derive allowed names from it.
ACTIONS: dict[str, Action] = {
    "install_model": Action({"sha256": SHA256}, {"url": _url, "file": FILE}, ("url", "file"), True),
    "rollback_model": Action({"sha256": SHA256}, always_signed=True),
    "flag": Action({"id": EVENT_ID}),
    "label": Action({"id": EVENT_ID, "label": LABEL}, {"by": WHO}),
    "clear_fault": Action({}, {"by": WHO}),
}


def parse_command(payload: bytes) -> dict:
    """Validate a remote command against its action's schema; CommandError names the field at fault."""
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"{len(payload)} bytes: longer than {MAX_PAYLOAD}")
    try:
        cmd = json.loads(payload, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CommandError(f"not JSON: {e}") from None
    except RecursionError:
        raise CommandError("not JSON: nested too deeply") from None
    if not isinstance(cmd, dict):
        raise CommandError("must be a JSON object")
    action = cmd.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        shown = action if isinstance(action, str) else type(action).__name__
        raise CommandError(f"action {str(shown)[:40]!r} unknown; allowed: {', '.join(ACTIONS)}")
    spec = ACTIONS[action]
    known = {"action", *spec.required, *spec.optional, *ENVELOPE}
    unknown = sorted(str(k)[:40] for k in cmd if k not in known)
    if unknown:
        raise CommandError(f"{action}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(known - {'action'}))}")
    for key, check in spec.required.items():
        if key not in cmd:
            raise CommandError(f"{action} needs {key!r}")
        check(f"{action}.{key}", cmd[key])
    for key, check in spec.optional.items():
        if key in cmd:
            check(f"{action}.{key}", cmd[key])
    if spec.one_of and sum(k in cmd for k in spec.one_of) != 1:
        raise CommandError(f"{action} needs exactly one of {' or '.join(repr(k) for k in spec.one_of)}")
    present = [k for k in ENVELOPE if k in cmd]
    if present and len(present) != len(ENVELOPE):
        missing = [k for k in ENVELOPE if k not in cmd]
        raise CommandError(f"{action}: a signed command needs {', '.join(ENVELOPE)}; missing {', '.join(missing)}")
    for key in present:
        ENVELOPE_CHECKS[key](key, cmd[key])
    return cmd


def _no_constant(name: str):
    raise CommandError(f"not JSON: {name} is not a number")


# --------------------------------------------------------------------------- processing

@dataclass
class Callbacks:
    """What the Sorter lends the control plane. Each may be None: that action then answers 'not supported'."""

    flag: Callable[[str], bool] | None = None
    label: Callable[[str, str, str], bool] | None = None
    clear_fault: Callable[[str], bool] | None = None
    request_swap: Callable[[Path], None] | None = None


class _RateLimit:
    """A token bucket: `per_minute` on average, bursts up to `burst`."""

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = per_minute / 60.0, float(burst), clock
        self.tokens, self.t = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class CommandProcessor:
    def __init__(self, cfg, store, state_dir: Path, callbacks: Callbacks,
                 reply: Callable[[dict], None] | None = None, backend: str | None = None):
        self.cfg, self.store, self.callbacks = cfg, store, callbacks
        self.reply_fn = reply
        self.backend = backend or cfg.model.backend
        keys = [decode_public_key(k) for k in ([cfg.model.public_key] if cfg.model.public_key else [])
                + list(cfg.model.public_keys)]
        self.verifier = Verifier(keys, cfg.bin_id, Path(state_dir) / "command-nonces.json",
                                 cfg.commands.clock_window_s)
        self.trusted = frozenset(cfg.commands.trust_broker_for)
        self.queue: queue.Queue[bytes] = queue.Queue(maxsize=cfg.commands.queue_size)
        # Two budgets: commands whose signature verifies have their own, so junk from any client the
        # broker lets publish (unsigned, forged, malformed) cannot starve the owner's signed commands.
        self.limit = _RateLimit(cfg.commands.rate_per_minute, cfg.commands.queue_size)
        self.limit_signed = _RateLimit(cfg.commands.rate_per_minute, cfg.commands.queue_size)
        self.cancel = threading.Event()  # set on close: ends a download within one socket read
        self.dropped = 0
        self.handled = 0
        self._dropped_logged_at = -1e9
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="commands", daemon=True)

    def start(self) -> CommandProcessor:
        self._thread.start()
        return self

    # ------------------------------------------------------------ the network thread's side
    def submit(self, payload: bytes, retained: bool = False) -> None:
        """Queue a command; O(1), never blocks, never raises (it runs on paho's network thread)."""
        try:
            if retained:
                log.warning("retained command ignored (%d bytes): commands are never taken from the "
                            "broker's memory; it is cleared", len(payload))
                self._reply({"ok": False, "error": "retained command ignored and cleared"})
                return
            signed = self._signed(payload)  # ed25519 is cheap: check before spending a budget
            with self._lock:
                # unverified traffic may fill only half the queue: room stays for signed commands
                ok = (self.limit_signed.take() if signed else
                      self.queue.qsize() < max(1, self.queue.maxsize // 2) and self.limit.take())
                if ok:
                    try:
                        self.queue.put_nowait(bytes(payload))
                    except queue.Full:
                        ok = False
                if not ok:
                    self._drop()
        except Exception:  # the network thread must survive anything
            log.exception("command intake failed")

    def _signed(self, payload: bytes) -> bool:
        """True if the payload parses and its signature verifies for this bin now. No nonce is used
        up here (that, and everything else, is the worker's full check); only the budget is chosen."""
        if not self.verifier.enabled or len(payload) > MAX_PAYLOAD:
            return False
        try:
            cmd = parse_command(payload)
        except CommandError:
            return False
        return "sig" in cmd and self.verifier.signature_ok(cmd)

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= 60.0:  # one line a minute, not one per flooded message
            self._dropped_logged_at = now
            log.warning("commands arriving faster than commands.rate_per_minute = %g or queue full: "
                        "%d dropped so far", self.cfg.commands.rate_per_minute, self.dropped)
            self._reply({"ok": False, "error": "rate limited: command dropped"})

    # ------------------------------------------------------------ the worker
    def _work(self) -> None:
        while not self.cancel.is_set():
            try:
                payload = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self._reply(self.handle(payload))

    def handle(self, payload: bytes) -> dict:
        """Parse, authenticate, execute: a reply dict, whatever the payload (never raises)."""
        action = None
        result: dict[str, Any] = {}
        try:
            cmd = parse_command(payload)
            action = cmd["action"]
            if "nonce" in cmd:
                result["nonce"] = cmd["nonce"]
            key = self._authenticate(action, cmd)
            result.update(self._execute(action, cmd, key))
            result = {"action": action, "ok": True, **result}
        except EcoSorterError as e:
            log.warning("command %s refused: %s", action or "?", e)
            if getattr(e, "checks", None):  # an install refused: what was checked, up to the refusal
                result["checks"] = list(e.checks)
            result = {"action": action, "ok": False, "error": str(e), **result}
        except Exception as e:  # a bug here must not become a way to stop the bin
            log.exception("command %s failed", action or "?")
            result = {"action": action, "ok": False, "error": f"internal error ({type(e).__name__})", **result}
        self.handled += 1
        return result

    def _authenticate(self, action: str, cmd: dict) -> str:
        """The id of the key the command verified with; "" for a broker-trusted unsigned one."""
        signed = "sig" in cmd
        if ACTIONS[action].always_signed and not self.verifier.enabled:
            raise AuthError(f"remote {action} is off: no key configured (model.public_key); root can still run "
                            "`ecosorter model install` on the bin")
        if signed or action not in self.trusted:
            if not self.verifier.enabled:
                raise AuthError(f"{action} must be signed but no key is configured (model.public_key); "
                                "or list it in commands.trust_broker_for to trust the broker's ACLs")
            return self.verifier.verify(cmd)
        return ""

    def _execute(self, action: str, cmd: dict, key: str = "") -> dict:
        cb = self.callbacks
        if action == "flag":
            if not _need(cb.flag, "flag")(cmd["id"]):
                raise CommandError(f"flag: no event {cmd['id']!r} (or it could not be saved)")
            return {"id": cmd["id"], "flagged": True}
        if action == "label":
            ok = _need(cb.label, "labels")(cmd["id"], cmd["label"], cmd.get("by", "mqtt"))
            if not ok:
                raise CommandError(f"label: no event {cmd['id']!r}")
            return {"id": cmd["id"], "label": cmd["label"]}
        if action == "clear_fault":
            if _need(cb.clear_fault, "clear_fault")(cmd.get("by", "mqtt")):
                return {"cleared": True}
            # "ok": true, "cleared": false read as a clear that did not take
            return {"cleared": False, "note": "no fault was latched: nothing to clear (holds such as lid, full, "
                    "camera, disk and power clear by themselves when their cause ends)"}
        store = self.store
        if store is None:
            raise CommandError(f"{action}: this bin has no model store")
        swap = _need(cb.request_swap, "model swaps")
        # model.path names the file `run` loads at start: a model swapped in now is gone at the next restart
        pinned = ({"note": f"model.path is set ({self.cfg.model.path}): this bin runs the installed model until "
                           "its next restart, then model.path's file again; empty model.path to keep it"}
                  if self.cfg.model.path else {})
        if action == "rollback_model":
            to = store.rollback(cmd["sha256"])
            swap(store.current)
            return {"model": to, **pinned}
        downloaded, running = None, store.current.resolve() if store.current.exists() else None
        try:
            if "url" in cmd:
                src = downloaded = store.fetch(cmd["url"], cmd["sha256"], self.cancel)
            else:
                src = store.resolve_reference(cmd["file"])
            # never unsigned over MQTT: the command's own signature stands for the file's
            r = store.install(src, cmd["sha256"], backend=self.backend, authenticated=True, command_key=key,
                              origin=f"mqtt {cmd.get('url') or cmd.get('file')}")
        finally:
            if downloaded is not None:
                downloaded.unlink(missing_ok=True)  # kept as sha-<hash>.tflite when installed
        if store.current.resolve() != running:  # the very model already running needs no swap
            swap(store.current)
        return {"sha256": r.sha256, "version": r.version, "self_test": r.self_test, "checks": r.checks, **pinned}

    def _reply(self, result: dict) -> None:
        if self.reply_fn is None:
            return
        try:
            self.reply_fn(result)
        except Exception:
            log.exception("could not publish a command result")

    def close(self, timeout: float = 3.0) -> None:
        self.cancel.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def _need(fn, what: str):
    if fn is None:
        raise CommandError(f"{what} not supported on this bin")
    return fn


def callbacks_for(sorter) -> Callbacks:
    """The Sorter's callbacks: what each remote action does on the bin."""

    def label(event_id: str, label: str, who: str) -> bool:
        if label not in sorter.model.manifest.label_ids:
            raise CommandError(f"label.label: {label!r} is not one of this model's labels "
                               f"({', '.join(sorter.model.manifest.label_ids)})")
        return sorter.label(event_id, label, who)

    return Callbacks(flag=sorter.flag, label=label, clear_fault=sorter.clear_fault, request_swap=sorter.request_swap)
