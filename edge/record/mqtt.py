"""MQTT telemetry (paho-mqtt 2): events from the SQLite outbox, retained state, availability, commands.

Topics under <prefix>/<bin_id>/:
    event          QoS 1, one JSON event per item, at-least-once, in order, stable `id` for de-dup
    state          retained: today's counts, health, last item, machine, compartments, and for the
                   fleet (ecosorter fleet): model sha256/version, items_today, uncertain_share,
                   wrong_today (items flagged "wrong" today), totals since start
    availability   retained "online" / "offline" (the broker publishes "offline" as our last will)
    cmd            subscribed: commands, handed to edge/commands.py (schema, signatures, worker);
                   retained messages there are ignored and cleared
    cmd/result     the answer to each command
The outbox is a table in the event database, so an event is queued in the same transaction
that records it: nothing is lost across broker outages, restarts or power cuts. A new log started
under the running bin (a damaged one set aside) is given the events since the last good check
again, queued again: those the broker has already acknowledged are not published twice.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ecosorter.edge.commands import CommandError, parse_command
from ecosorter.edge.config import MqttConfig
from ecosorter.edge.record.events import JOURNAL_MAX, connect

log = logging.getLogger("ecosorter.mqtt")
# A connection the broker drops this soon after it was made, this many times in a row, is a client
# id taken over again and again (two bins with one bin_id), not a bad network: said in words, once.
SHORT_LIVED_S = 5.0
TAKEOVER_DROPS = 3
# kept importable from here for callers of the old location
__all__ = ["CommandError", "MqttLink", "parse_command"]


class MqttLink:
    def __init__(self, cfg: MqttConfig, bin_id: str, db_path: Path, labels: dict[str, str],
                 on_command: Callable[[bytes, bool], None] | None = None, client_id: str | None = None,
                 on_link: Callable[[str, str], None] | None = None,
                 compartments: dict[str, int] | None = None, trusted: frozenset[str] = frozenset()):
        import paho.mqtt.client as mqtt

        from ecosorter.edge.secrets import read_secret

        self.cfg, self.bin_id, self.db_path, self.labels = cfg, bin_id, Path(db_path), labels
        self.base = f"{cfg.topic_prefix}/{bin_id}"
        self.on_command = on_command  # (payload, retained): edge/commands.py's CommandProcessor.submit
        self.on_link = on_link  # (state, detail) on every change: the board's link health
        self.link_state: tuple[str, str] = ("disconnected", "not connected yet")
        self.connected = threading.Event()
        self.client_id = client_id or f"ecosorter-{bin_id}"
        self._up_at = 0.0  # monotonic time of the last successful connect
        self._short_drops = 0  # connections in a row the broker closed within SHORT_LIVED_S
        self.sent = 0
        # the last JOURNAL_MAX ids the broker acknowledged: events are published in the order they are
        # committed, so these cover every published event the event log's journal can re-queue
        self._acked: dict[str, None] = {}  # insertion-ordered: the oldest goes first
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_state = b""
        self.compartments, self.trusted = compartments, frozenset(trusted)  # for HA discovery
        self.wrong_today = 0  # counted by the outbox thread from the event log, never on the loop
        self._wrong_at = -1e9
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        clean_session=True)
        if cfg.username:
            password = read_secret("mqtt_password", cfg.password_file) or cfg.password
            if cfg.password:
                log.warning("mqtt.password is in the config file; move it to mqtt.password_file (mode 0600) "
                            "or a systemd credential (LoadCredential=mqtt_password:...)")
            c.username_pw_set(cfg.username, password or None)
        if cfg.tls:
            c.tls_set(ca_certs=cfg.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        c.will_set(f"{self.base}/availability", "offline", qos=1, retain=True)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        self.client = c
        self._thread = threading.Thread(target=self._drain, name="mqtt outbox", daemon=True)

    # --------------------------------------------------------------- connection
    def start(self) -> MqttLink:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self._thread.start()
        return self

    def _set_link(self, state: str, detail: str, level: int = logging.WARNING) -> None:
        """Log once per change of state or reason, not once per reconnect attempt."""
        if (state, detail) == self.link_state:
            return
        self.link_state = (state, detail)
        log.log(level, "MQTT broker %s:%d: %s (%s)", self.cfg.host, self.cfg.port, state, detail)
        if self.on_link is not None:
            try:
                self.on_link(state, detail)
            except Exception:
                log.exception("link state callback failed")

    def _on_connect_fail(self, client, userdata) -> None:
        self._set_link("disconnected", "cannot connect (broker down, unreachable or refusing TCP)")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._set_link("disconnected", f"broker refused the connection: {reason_code}", logging.ERROR)
            return
        client.publish(f"{self.base}/availability", "online", qos=1, retain=True)
        client.subscribe(f"{self.base}/cmd", qos=1)
        if self.cfg.home_assistant:
            self._discovery()
        self.connected.set()
        self._last_state = b""
        self._wake.set()
        self._up_at = time.monotonic()
        # once the takeover is said, its reconnects every second are not news in the journal
        self._set_link("connected", f"{self.cfg.host}:{self.cfg.port}",
                       logging.DEBUG if self._short_drops >= TAKEOVER_DROPS else logging.INFO)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and self._stop.is_set():  # our own close(): not a warning at every stop
            self._set_link("disconnected", "the sorter is stopping", logging.INFO)
        elif self.connected.is_set():
            short = time.monotonic() - self._up_at < SHORT_LIVED_S
            self._short_drops = self._short_drops + 1 if short else 0
            if self._short_drops >= TAKEOVER_DROPS:
                self._set_link("disconnected", self.takeover_words(),
                               logging.ERROR if self._short_drops == TAKEOVER_DROPS else logging.DEBUG)
            else:
                self._set_link("disconnected", f"connection lost ({reason_code}); events wait in the outbox")
        self.connected.clear()

    def takeover_words(self) -> str:
        return (f"the broker closed {self._short_drops} connections in a row within {SHORT_LIVED_S:g} s of "
                f"making them: another client is most likely connected with this bin's client id "
                f"{self.client_id!r}, i.e. two bins share bin_id {self.bin_id!r}; give each bin its own "
                "bin_id in its config (the example's is 'ecosorter-1'). If no other bin has it, the broker is "
                "closing the link for something this bin sends (an ACL or packet-size limit: see the broker's "
                "log); events wait in the outbox")

    # --------------------------------------------------------------- outbox
    def record(self, event, pixels=None, order: str = "rgb") -> None:
        self._wake.set()  # the event is already in the outbox (same transaction as the log)

    def pending(self) -> int:
        db = connect(self.db_path)
        try:
            return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        finally:
            db.close()

    def _drain(self) -> None:
        db: sqlite3.Connection | None = None
        db_ino = -1
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self.connected.is_set():
                continue
            try:
                ino = os.stat(self.db_path).st_ino
                if db is not None and ino != db_ino:  # the log was set aside (damaged) or recreated
                    db.close()
                    db = None
                if db is None:
                    db, db_ino = connect(self.db_path), ino
                self._count_wrong(db)
                self._send_batch(db)
            except (sqlite3.Error, OSError) as e:
                log.error("outbox %s: %s", self.db_path, e)
                if db is not None:
                    db.close()
                db = None
        if db is not None:
            db.close()

    def _count_wrong(self, db: sqlite3.Connection) -> None:
        """Items flagged "wrong" today (the fleet's rollouts compare it before/after), every 30 s."""
        if time.monotonic() - self._wrong_at < 30.0:
            return
        self._wrong_at = time.monotonic()
        midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        since = midnight.astimezone(timezone.utc).isoformat(timespec="milliseconds")
        self.wrong_today = db.execute("SELECT COUNT(*) FROM events WHERE time >= ? AND flagged = 1",
                                      (since,)).fetchone()[0]

    def _send_batch(self, db: sqlite3.Connection) -> None:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT e.* FROM outbox o JOIN events e ON e.seq = o.seq ORDER BY o.seq LIMIT 100").fetchall()
        for r in rows:
            if self._stop.is_set() or not self.connected.is_set():
                return
            if r["id"] in self._acked:  # re-queued by a new log (the journal): the broker has it
                db.execute("DELETE FROM outbox WHERE seq = ?", (r["seq"],))
                continue
            payload = {k: r[k] for k in r.keys() if k != "seq"}  # noqa: SIM118 - sqlite3.Row iterates values
            payload["probabilities"] = json.loads(payload["probabilities"])
            payload["latency_ms"] = json.loads(payload["latency_ms"])
            for k in ("uncertain", "routed_ok", "flagged"):
                payload[k] = bool(payload[k])
            info = self.client.publish(f"{self.base}/event", json.dumps(payload, separators=(",", ":")), qos=1)
            try:
                info.wait_for_publish(timeout=10)
            except (RuntimeError, ValueError):
                return
            if not info.is_published():
                return  # not acknowledged: try again (same order) when connected
            db.execute("DELETE FROM outbox WHERE seq = ?", (r["seq"],))
            self.sent += 1
            self._acked[r["id"]] = None
            if len(self._acked) > JOURNAL_MAX:
                del self._acked[next(iter(self._acked))]
        if len(rows) == 100:
            self._wake.set()

    # --------------------------------------------------------------- state, discovery, commands
    def publish_state(self, snapshot: dict, model: dict | None = None) -> None:
        """`model`: the running model's {"sha256", "version"} (the fleet's rollouts read it)."""
        if not self.connected.is_set():
            return
        keys = ("today", "total", "totals", "health", "healthy", "last", "machine", "compartments", "unrouted")
        state = {k: snapshot[k] for k in keys if k in snapshot}
        today = snapshot.get("today") or {}
        items = sum((today.get("counts") or {}).values())
        # the board's trust words (signed, verified) and the running file's sha/version in one object
        state.update({"model": {**(snapshot.get("model") or {}), **(model or {})} or None,
                      "items_today": items, "wrong_today": self.wrong_today,
                      "uncertain_share": round(today.get("uncertain", 0) / items, 4) if items else None})
        body = json.dumps(state, separators=(",", ":")).encode()
        if body != self._last_state:  # "at" (when it changed: the fleet's "last seen") is not compared
            from ecosorter.edge.record.event import wall_iso

            self.client.publish(f"{self.base}/state", body[:-1] + b',"at":"' + wall_iso().encode() + b'"}',
                                qos=1, retain=True)
            self._last_state = body

    def publish_machine(self, entry: dict, state: str, who: str) -> None:
        """A hold or fault raised or cleared: QoS 1 on <prefix>/<bin>/machine (best effort while offline;
        the machine_log table and the retained state keep the record)."""
        if self.connected.is_set():
            self.client.publish(f"{self.base}/machine", json.dumps({**entry, "state": state, "who": who},
                                                                   separators=(",", ":")), qos=1)

    def _discovery(self) -> None:
        from ecosorter.edge.record.ha import discovery

        for topic, payload in discovery(self.bin_id, self.base, self.labels, self.compartments, self.trusted):
            self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=True)

    def _on_message(self, client, userdata, msg) -> None:
        if not msg.payload:
            return  # our own clearing of a retained command, echoed back
        try:  # an exception here would end paho's network thread
            if msg.retain:
                # A retained command would run again at every restart (a crash loop, if it crashed
                # us): never act on one, and remove it from the broker.
                client.publish(msg.topic, b"", qos=1, retain=True)
            if self.on_command is not None:
                self.on_command(msg.payload, bool(msg.retain))
        except Exception:
            log.exception("MQTT message on %s not handled", msg.topic)

    def reply(self, result: dict) -> None:
        self.client.publish(f"{self.base}/cmd/result", json.dumps(result, default=str), qos=1)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        if self.connected.is_set():
            try:  # the connection may drop between the check and the publish: the last will says it then
                self.client.publish(f"{self.base}/availability", "offline", qos=1, retain=True).wait_for_publish(2)
            except (RuntimeError, ValueError) as e:
                log.info("MQTT: 'offline' not sent at close (%s); the broker's last will says it", e)
        self.client.disconnect()
        self.client.loop_stop()
