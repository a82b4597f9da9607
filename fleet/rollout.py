"""`ecosorter fleet rollout`: a signed model, canaries first, watched through a soak, then the rest in
waves; a regression rolls the changed bins back (signed) and stops. State in SQLite: it resumes.

The bins already verify everything (edge/commands.py: signature over action, sha256, url, bin id,
time and nonce; then hash, manifest, labels, self-test). This module only decides who gets the
command when, and watches what the bins report in their retained state:

    before   the bin's state when the install is sent (its own figures before)
    base     its first state on the new model (counts from here on are the new model's)
    verdict  during the soak, from base to now: new faults, uncertain share and "wrong" rate
             against `before` (items since the bin started, else today), a drift alert if the
             state carries one. Fewer than `min_items` new items: no verdict yet.

Commands are never retained (by design), so a bin that is offline gets its command when it comes
back (its availability says "online" and its first state after that shows it has subscribed).
A command without an answer is sent again after `resend_s`; an install of the model a bin
already runs is harmless, so a resend after a restart of this tool is too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.server
import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ecosorter.fleet.broker import Broker, FleetError
from ecosorter.fleet.view import BinSeen, FleetView

log = logging.getLogger("ecosorter.fleet.rollout")

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL, version INTEGER, model_path TEXT NOT NULL, url TEXT NOT NULL,
    serve TEXT NOT NULL DEFAULT '', params TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', wave INTEGER NOT NULL DEFAULT 0,
    soak_from REAL, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS targets (
    rollout INTEGER NOT NULL REFERENCES rollouts(id), bin_id TEXT NOT NULL, wave INTEGER NOT NULL,
    phase TEXT NOT NULL, prev_sha TEXT NOT NULL DEFAULT '', before TEXT, base TEXT,
    nonce TEXT NOT NULL DEFAULT '', sent_at REAL, done_at REAL, detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout, bin_id)
);
CREATE TABLE IF NOT EXISTS log (rollout INTEGER NOT NULL, t REAL NOT NULL, bin_id TEXT NOT NULL, what TEXT NOT NULL);
"""
RUNNING, DONE, ROLLING_BACK, ROLLED_BACK = "running", "done", "rolling back", "rolled back"
ABANDONED = "abandoned"
FINISHED = (DONE, ROLLED_BACK, ABANDONED)
# a target's phases: pending -> sent -> installed -> ok; failed; rollback_sent -> rolled_back
# (rollback_failed); cancelled (never changed: the rollout stopped before it got the model)
CHANGED = ("installed", "ok", "rollback_sent")


@dataclass(frozen=True)
class Params:
    canary: int = 2
    soak_s: float = 600.0
    pattern: str = "*"
    min_items: int = 20  # new items a bin must have sorted on the new model before it is judged
    max_uncertain_rise: float = 0.15  # share of uncertain items, absolute, over the bin's own before
    max_wrong_rise: float = 0.10  # share of items flagged "wrong"
    resend_s: float = 60.0  # a command with no answer is sent again after this

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def parse_duration(text: str, what: str = "--soak") -> float:
    """90, 90s, 15m, 2h, 1d -> seconds."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise FleetError(f"{what} {text!r}: give a duration like 90s, 15m, 2h or 1d")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


def open_db(path: Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)  # autocommit: every step is on disk before the next
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


def _totals(state: dict) -> tuple[int, int]:
    t = state.get("totals") or {}
    return sum((t.get("counts") or {}).values()), int(t.get("uncertain") or 0)


def _fault_names(state: dict) -> set[str]:
    return {str(f.get("name")) for f in ((state.get("machine") or {}).get("faults") or [])}


def _drifting(state: dict) -> bool:
    """The drift watch's alarm, if the bin has one: a `model_drift` hold (edge/decide's drift watch
    raises it on the machine), or a `drift` object with a true `alert` in the state."""
    holds = (state.get("machine") or {}).get("holds") or []
    d = state.get("drift")
    return any(h.get("name") == "model_drift" for h in holds) or (isinstance(d, dict) and bool(d.get("alert")))


def judge(before: dict, base: dict, now: dict, p: Params) -> tuple[str, str]:
    """('wait' | 'pass' | 'fail', why) for one bin on the new model, from its own retained states."""
    new_faults = _fault_names(now) - _fault_names(base)
    if new_faults:
        f = next(x for x in (now.get("machine") or {}).get("faults", []) if x.get("name") in new_faults)
        return "fail", f"fault {f.get('name')}: {f.get('reason_en', '')}"
    if _drifting(now) and not _drifting(before):
        return "fail", "the drift watch raised an alert"
    items0, unc0 = _totals(base)
    items1, unc1 = _totals(now)
    if items1 < items0:  # the bin restarted: its totals start again; nothing to compare yet
        return "wait", "bin restarted; counting again"
    n = items1 - items0
    if n < p.min_items:
        return "wait", f"{n}/{p.min_items} items on the new model"
    share = (unc1 - unc0) / n
    b_items, b_unc = _totals(before)
    if b_items >= p.min_items:
        was = b_unc / b_items
    elif (before.get("items_today") or 0) >= p.min_items and before.get("uncertain_share") is not None:
        was = float(before["uncertain_share"])
    else:
        was = None  # no figure of its own before: only a share no bin should have counts
    limit = (was if was is not None else 0.35) + p.max_uncertain_rise
    if share > limit:
        before_txt = f"{was:.0%} before" if was is not None else "no figure before"
        return "fail", f"uncertain share {share:.0%} of {n} items on the new model vs {before_txt}"
    w0 = int(base.get("wrong_today") or 0)
    w1 = int(now.get("wrong_today") or 0)
    if w1 >= w0:  # (lower: midnight passed; then no verdict on it)
        wrong = (w1 - w0) / n
        wb = int(before.get("wrong_today") or 0) / max(1, int(before.get("items_today") or 0))
        if wrong > wb + p.max_wrong_rise:
            return "fail", f"'wrong' rate {wrong:.0%} of {n} items vs {wb:.0%} before"
    return "pass", f"{n} items, uncertain {share:.0%}" + (f" (was {was:.0%})" if was is not None else "")


class ModelServer:
    """Serves one file at /models/<sha256>.tflite and nothing else (the bins check the sha256)."""

    def __init__(self, path: Path, sha256: str, bind: str, port: int):
        body = Path(path).read_bytes()
        want = f"/models/{sha256}.tflite"

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path != want:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        try:
            self.httpd = http.server.ThreadingHTTPServer((bind, port), Handler)
        except OSError as e:
            raise FleetError(f"--serve {bind}:{port}: cannot listen ({e.strerror or e})") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.path = want
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="model server").start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Rollout:
    """One rollout, driven by `run()`; every step is written to SQLite before the next."""

    def __init__(self, db: sqlite3.Connection, rid: int, broker: Broker, key: str, say=print,
                 poll_s: float = 0.5):
        self.db, self.id, self.broker, self.key, self.say, self.poll = db, rid, broker, key, say, poll_s
        self.results: queue.Queue[tuple[str, dict]] = queue.Queue()
        self.view = FleetView(broker, on_result=lambda b, r: self.results.put((b, r)))
        self.server: ModelServer | None = None
        r = self.row
        self.params = Params(**json.loads(r["params"]))

    # ------------------------------------------------------------ creating or finding one
    @classmethod
    def create(cls, db: sqlite3.Connection, view: FleetView, model: Path, params: Params, url: str,
               serve: str, version: int | None) -> int:
        sha = sha256_of(model)
        open_ = db.execute("SELECT id, sha256 FROM rollouts WHERE state NOT IN (?, ?, ?)", FINISHED).fetchone()
        if open_ is not None:
            if open_["sha256"] == sha:
                return int(open_["id"])  # the same model again: resume it
            raise FleetError(f"rollout {open_['id']} (model {open_['sha256'][:12]}) is not finished: "
                             "resume it (`ecosorter fleet rollout --resume`) or end it (`--abandon`)")
        now = time.time()
        bins = [b for b in sorted(view.bins) if fnmatch.fnmatchcase(b, params.pattern)]
        if not bins:
            raise FleetError(f"--bins {params.pattern!r}: no bin on the broker matches "
                             f"(seen: {', '.join(sorted(view.bins)) or 'none'})")
        seen = {b: view.get(b) for b in bins}
        todo = [b for b in bins if seen[b].model_sha != sha]
        online = [b for b in todo if seen[b].online]
        canaries = online[: params.canary]
        if len(canaries) < min(params.canary, len(todo)):
            raise FleetError(f"--canary {params.canary}: only {len(canaries)} of the bins to update are online "
                             f"({', '.join(online) or 'none'})")
        rest = [b for b in todo if b not in canaries]
        waves: dict[str, int] = dict.fromkeys(canaries, 0)
        size, w = max(1, 2 * params.canary), 1
        while rest:  # each wave twice the last
            waves.update(dict.fromkeys(rest[:size], w))
            rest, size, w = rest[size:], size * 2, w + 1
        cur = db.execute("INSERT INTO rollouts (sha256, version, model_path, url, serve, params, state, created, "
                         "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (sha, version, str(Path(model).resolve()), url, serve, params.to_json(), RUNNING, now, now))
        rid = int(cur.lastrowid)
        for b in bins:
            if b in waves:
                db.execute("INSERT INTO targets (rollout, bin_id, wave, phase) VALUES (?, ?, ?, 'pending')",
                           (rid, b, waves[b]))
            else:
                db.execute("INSERT INTO targets (rollout, bin_id, wave, phase, detail, done_at) "
                           "VALUES (?, ?, -1, 'ok', 'already running it', ?)", (rid, b, now))
        return rid

    @property
    def row(self) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM rollouts WHERE id = ?", (self.id,)).fetchone()

    def targets(self, where: str = "1", args: tuple = ()) -> list[sqlite3.Row]:
        return self.db.execute(f"SELECT * FROM targets WHERE rollout = ? AND ({where}) ORDER BY wave, bin_id",
                               (self.id, *args)).fetchall()

    def _set(self, bin_id: str, **kw) -> None:
        cols = ", ".join(f"{k} = ?" for k in kw)
        self.db.execute(f"UPDATE targets SET {cols} WHERE rollout = ? AND bin_id = ?", (*kw.values(), self.id, bin_id))

    def _rollout(self, **kw) -> None:
        kw["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in kw)
        self.db.execute(f"UPDATE rollouts SET {cols} WHERE id = ?", (*kw.values(), self.id))

    def _log(self, bin_id: str, what: str) -> None:
        self.db.execute("INSERT INTO log VALUES (?, ?, ?, ?)", (self.id, time.time(), bin_id, what))
        self.say(f"{bin_id}: {what}" if bin_id else what)

    # ------------------------------------------------------------ running it
    def run(self, stop: threading.Event | None = None) -> str:
        """Until the rollout is done or rolled back (or `stop`); returns its state."""
        stop = stop or threading.Event()
        r = self.row
        if r["serve"]:
            bind, _, port = r["serve"].rpartition(":")
            self.server = ModelServer(Path(r["model_path"]), r["sha256"], bind, int(port))
        self.view.start()
        try:
            while not stop.is_set():
                self._take_results()
                state = self.row["state"]
                if state == RUNNING:
                    self._advance()
                elif state == ROLLING_BACK:
                    self._roll_back()
                else:
                    return state
                stop.wait(self.poll)
            return self.row["state"]
        finally:
            self.view.close()
            if self.server is not None:
                self.server.close()

    def _ready(self, b: BinSeen | None) -> bool:
        """Online and subscribed: a live state after it came online (the bin subscribes first), or 3 s."""
        if b is None or not b.online:
            return False
        return b.state_live_at >= b.online_at or time.monotonic() - b.online_at > 3.0

    def _send(self, t: sqlite3.Row, action: str, args: dict) -> None:
        from ecosorter.edge.security import sign_command

        cmd = sign_command(self.key, action, args, t["bin_id"])
        self._set(t["bin_id"], nonce=cmd["nonce"], sent_at=time.time(),
                  phase="sent" if action == "install_model" else "rollback_sent")
        info = self.view.client.publish(f"{self.broker.prefix}/{t['bin_id']}/cmd",
                                        json.dumps(cmd, separators=(",", ":")), qos=1)
        info.wait_for_publish(10)

    def _install(self, t: sqlite3.Row) -> None:
        b = self.view.get(t["bin_id"])
        if not self._ready(b):
            return
        r = self.row
        before = t["before"] if t["phase"] == "sent" and t["before"] else json.dumps(b.state)
        self._set(t["bin_id"], before=before, prev_sha=t["prev_sha"] or b.model_sha)
        self._send(t, "install_model", {"sha256": r["sha256"], "url": r["url"]})
        self._log(t["bin_id"], ("install sent again" if t["phase"] == "sent" else "install sent")
                  + f" (wave {t['wave']})")

    def _take_results(self) -> None:
        while True:
            try:
                bin_id, res = self.results.get_nowait()
            except queue.Empty:
                return
            t = self.db.execute("SELECT * FROM targets WHERE rollout = ? AND bin_id = ?", (self.id, bin_id)).fetchone()
            if t is None or not t["nonce"] or res.get("nonce") != t["nonce"]:
                continue  # another command's answer (or another rollout's)
            ok = res.get("ok") is True
            if res.get("action") == "install_model" and t["phase"] == "sent":
                if ok:
                    self._set(bin_id, phase="installed", done_at=time.time(), nonce="",
                              detail=f"self-test {res.get('self_test', '?')}")
                    self._log(bin_id, f"installed, self-test {res.get('self_test', '?')}")
                else:
                    self._set(bin_id, phase="failed", done_at=time.time(), nonce="", detail=str(res.get("error"))[:300])
                    self._log(bin_id, f"install refused: {res.get('error')}")
                    if self.row["state"] == RUNNING and t["wave"] == self.row["wave"]:
                        self._stop(f"{bin_id} refused the model: {res.get('error')}")
            elif res.get("action") == "rollback_model" and t["phase"] == "rollback_sent":
                self._set(bin_id, phase="rolled_back" if ok else "rollback_failed", nonce="", done_at=time.time(),
                          detail=str(res.get("model") if ok else res.get("error"))[:300])
                self._log(bin_id, f"rolled back to {res.get('model')}" if ok else f"rollback failed: {res.get('error')}")

    def _resend_due(self, t: sqlite3.Row) -> bool:
        return t["sent_at"] is None or time.time() - t["sent_at"] > self.params.resend_s

    def _advance(self) -> None:
        r, p, sha = self.row, self.params, self.row["sha256"]
        wave = r["wave"]
        for t in self.targets("phase IN ('pending', 'sent') AND wave <= ?", (wave,)):
            b = self.view.get(t["bin_id"])
            if t["phase"] == "sent" and b is not None and b.model_sha == sha:
                # the answer was lost (this tool restarted): the bin's state says it runs the model
                self._set(t["bin_id"], phase="installed", done_at=time.time(), nonce="", detail="seen in its state")
                self._log(t["bin_id"], "runs the new model (seen in its state)")
            elif t["phase"] == "pending" or self._resend_due(t):
                self._install(t)
        # the new model's first state on each installed bin is where its counts start
        for t in self.targets("phase IN ('installed', 'ok') AND base IS NULL"):
            b = self.view.get(t["bin_id"])
            if b is not None and b.model_sha == sha:
                self._set(t["bin_id"], base=json.dumps(b.state))
        # judge every bin that runs the new model and has not passed yet
        for t in self.targets("phase = 'installed' AND base IS NOT NULL"):
            b = self.view.get(t["bin_id"])
            if b is None:
                continue
            verdict, why = judge(json.loads(t["before"] or "{}"), json.loads(t["base"]), b.state, p)
            if verdict == "fail":
                self._log(t["bin_id"], f"regression: {why}")
                self._stop(f"{t['bin_id']}: {why}")
                return
            late = t["wave"] < wave and (verdict == "pass" or time.time() - (t["done_at"] or 0) > p.soak_s)
            self._set(t["bin_id"], detail=why, **({"phase": "ok"} if late else {}))
            if late:
                self._log(t["bin_id"], f"late bin on the new model: {why}")
        last = self.db.execute("SELECT MAX(wave) FROM targets WHERE rollout = ?", (self.id,)).fetchone()[0]
        if wave > last:  # every wave has passed: only bins that were offline are left
            if not self.targets("phase IN ('pending', 'sent', 'installed')"):
                refused = len(self.targets("phase = 'failed'"))
                self._rollout(state=DONE, reason="every bin runs the new model"
                              + (f" but {refused} refused it" if refused else ""))
                self._log("", f"rollout {self.id} done")
            return
        current = self.targets("wave = ?", (wave,))
        if any(t["phase"] == "failed" for t in current):
            return  # _take_results has started the rollback
        if any(t["phase"] in ("pending", "sent") and (self.view.get(t["bin_id"]) or BinSeen("")).online
               for t in current):
            return  # the wave's online bins are still installing
        installed = [t for t in current if t["phase"] == "installed"]
        if not installed:  # nobody of this wave online: theirs when they come back
            self._rollout(wave=wave + 1, soak_from=None)
            self._log("", f"wave {wave}: no bin of it online; next wave")
            return
        if r["soak_from"] is None:
            self._rollout(soak_from=time.time())
            self._log("", f"wave {wave}: {len(installed)} bin(s) on the new model; soak {p.soak_s:.0f} s")
            return
        elapsed = time.time() - r["soak_from"]
        judged = {}
        for t in installed:
            b = self.view.get(t["bin_id"])
            judged[t["bin_id"]] = (judge(json.loads(t["before"] or "{}"), json.loads(t["base"]), b.state, p)
                                   if t["base"] and b is not None else ("wait", "no state on the new model yet"))
        enough = all(v == "pass" for v, _ in judged.values())
        if elapsed < p.soak_s or (not enough and elapsed < 3 * p.soak_s):
            return
        # a bin that answered "installed" but whose state never showed the new model has not run it
        # (a swap it refused, or a lie): it cannot vouch for the model, so the rest must not get it
        unseen = [t for t in installed if not t["base"]]
        if unseen:
            b = self.view.get(unseen[0]["bin_id"])
            shows = b.model_sha[:12] if b is not None and b.model_sha else "no model"
            self._stop(f"{unseen[0]['bin_id']}: answered that it installed {sha[:12]} but its state still shows "
                       f"{shows} after the soak")
            return
        for t in installed:
            self._set(t["bin_id"], phase="ok", detail=judged[t["bin_id"]][1])
        self._rollout(wave=wave + 1, soak_from=None)
        self._log("", f"wave {wave} passed the soak" + ("" if enough else " (too few items to judge every bin)"))

    def _stop(self, reason: str) -> None:
        self._rollout(state=ROLLING_BACK, reason=reason)
        self._log("", f"stopping: {reason}; rolling back the bins already changed")

    def _roll_back(self) -> None:
        sha = self.row["sha256"]
        for t in self.targets("phase IN ('pending', 'sent', 'installed', 'ok', 'rollback_sent')"):
            b = self.view.get(t["bin_id"])
            runs_it = b is not None and b.model_sha == sha
            phase, bin_id = t["phase"], t["bin_id"]
            if phase == "sent" and runs_it:
                phase = "installed"
            if phase == "pending" or (phase == "sent" and self._resend_due(t)):
                self._set(bin_id, phase="cancelled", nonce="", detail="the rollout stopped before it got the model")
                continue
            if phase == "sent":
                continue  # its answer may still come
            moved_off = b is not None and b.model_sha and not runs_it
            if moved_off and (phase == "rollback_sent" or t["base"]):
                # seen on the new model before, not now: rolled back (its answer may have been lost)
                self._set(bin_id, phase="rolled_back", nonce="", done_at=time.time(), detail="seen in its state")
                self._log(bin_id, f"runs {b.model_sha[:12]} again")
                continue
            if phase == "rollback_sent" and not self._resend_due(t):
                continue
            if not t["prev_sha"]:
                self._set(bin_id, phase="rollback_failed", detail="its model before is not known")
                continue
            if self._ready(b):
                self._send(t, "rollback_model", {"sha256": t["prev_sha"]})
                self._log(bin_id, f"rollback sent (to {t['prev_sha'][:12]})")
        if not self.targets("phase IN ('pending', 'sent', 'installed', 'ok', 'rollback_sent')"):
            self._rollout(state=ROLLED_BACK)
            self._log("", f"rollout {self.id} rolled back: {self.row['reason']}")


def status_rows(db: sqlite3.Connection, rid: int | None = None) -> dict:
    """Where the last (or a given) rollout stands: its row and its targets."""
    r = (db.execute("SELECT * FROM rollouts WHERE id = ?", (rid,)).fetchone() if rid is not None
         else db.execute("SELECT * FROM rollouts ORDER BY id DESC LIMIT 1").fetchone())
    if r is None:
        return {"rollout": None, "targets": []}
    targets = db.execute("SELECT bin_id, wave, phase, prev_sha, detail, sent_at, done_at FROM targets "
                         "WHERE rollout = ? ORDER BY wave, bin_id", (r["id"],)).fetchall()
    keep = ("id", "sha256", "version", "url", "state", "reason", "wave", "created", "updated")
    return {"rollout": {**{k: r[k] for k in keep}, "params": json.loads(r["params"])},
            "targets": [dict(t) for t in targets]}
