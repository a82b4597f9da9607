"""MQTT telemetry (paho-mqtt 2): events from the SQLite outbox, retained state, availability, commands.

Topics under <prefix>/<bin_id>/:
    event          QoS 1, one JSON event per item, at-least-once, in order, stable `id` for de-dup
    state          retained: today's counts, health, last item
    availability   retained "online" / "offline" (the broker publishes "offline" as our last will)
    cmd            subscribed: {"action": "install_model", "url" | "file", "sha256", ["signature"]},
                   {"action": "rollback_model"}, {"action": "flag", "id"}
    cmd/result     the answer to each command
The outbox is a table in the event database, so an event is queued in the same transaction
that records it: nothing is lost across broker outages, restarts or power cuts.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import sqlite3
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from ecosorter.edge.config import MqttConfig
from ecosorter.edge.record.events import connect

log = logging.getLogger("ecosorter.mqtt")
ACTIONS = {"install_model", "rollback_model", "flag"}


class CommandError(ValueError):
    pass


def parse_command(payload: bytes) -> dict:
    """Validate a remote command; CommandError says what is wrong with it."""
    try:
        cmd = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CommandError(f"not JSON: {e}") from None
    if not isinstance(cmd, dict):
        raise CommandError("must be a JSON object")
    action = cmd.get("action")
    if action not in ACTIONS:
        raise CommandError(f"action {action!r} unknown; allowed: {', '.join(sorted(ACTIONS))}")
    if action == "install_model":
        if ("url" in cmd) == ("file" in cmd):
            raise CommandError("install_model needs exactly one of 'url' or 'file'")
        sha = cmd.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha):
            raise CommandError("install_model needs 'sha256': 64 hex digits")
        if "signature" in cmd:
            try:
                cmd["signature"] = base64.b64decode(cmd["signature"], validate=True)
            except (ValueError, TypeError):
                raise CommandError("'signature' must be base64") from None
    if action == "flag" and not (isinstance(cmd.get("id"), str) and cmd["id"].isalnum()):
        raise CommandError("flag needs 'id': an event id")
    return cmd


class MqttLink:
    def __init__(self, cfg: MqttConfig, bin_id: str, db_path: Path, labels: dict[str, str],
                 on_command: Callable[[dict], dict] | None = None, client_id: str | None = None):
        import paho.mqtt.client as mqtt

        self.cfg, self.bin_id, self.db_path, self.labels = cfg, bin_id, Path(db_path), labels
        self.base = f"{cfg.topic_prefix}/{bin_id}"
        self.on_command = on_command
        self.connected = threading.Event()
        self.sent = 0
        self.commands: queue.Queue[dict] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_state = b""
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"ecosorter-{bin_id}",
                        clean_session=True)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls:
            c.tls_set(ca_certs=cfg.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        c.will_set(f"{self.base}/availability", "offline", qos=1, retain=True)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c
        self._thread = threading.Thread(target=self._drain, name="mqtt outbox", daemon=True)

    # --------------------------------------------------------------- connection
    def start(self) -> MqttLink:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self._thread.start()
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason_code)
            return
        client.publish(f"{self.base}/availability", "online", qos=1, retain=True)
        client.subscribe(f"{self.base}/cmd", qos=1)
        if self.cfg.home_assistant:
            self._discovery()
        self.connected.set()
        self._last_state = b""
        self._wake.set()
        log.info("connected to MQTT broker %s:%d", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("MQTT broker connection lost (%s); events wait in the outbox", reason_code)
        self.connected.clear()

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
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self.connected.is_set():
                continue
            try:
                db = db or connect(self.db_path)
                self._send_batch(db)
            except (sqlite3.Error, OSError) as e:
                log.error("outbox %s: %s", self.db_path, e)
                if db is not None:
                    db.close()
                db = None
        if db is not None:
            db.close()

    def _send_batch(self, db: sqlite3.Connection) -> None:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT e.* FROM outbox o JOIN events e ON e.seq = o.seq ORDER BY o.seq LIMIT 100").fetchall()
        for r in rows:
            if self._stop.is_set() or not self.connected.is_set():
                return
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
        if len(rows) == 100:
            self._wake.set()

    # --------------------------------------------------------------- state, discovery, commands
    def publish_state(self, snapshot: dict) -> None:
        if not self.connected.is_set():
            return
        keys = ("today", "total", "health", "healthy", "last", "machine", "compartments", "unrouted")
        body = json.dumps({k: snapshot[k] for k in keys if k in snapshot},
                          separators=(",", ":")).encode()
        if body != self._last_state:
            self.client.publish(f"{self.base}/state", body, qos=1, retain=True)
            self._last_state = body

    def publish_machine(self, entry: dict, state: str, who: str) -> None:
        """A hold or fault raised or cleared: QoS 1 on <prefix>/<bin>/machine (best effort while offline;
        the machine_log table and the retained state keep the record)."""
        if self.connected.is_set():
            self.client.publish(f"{self.base}/machine", json.dumps({**entry, "state": state, "who": who},
                                                                   separators=(",", ":")), qos=1)

    def _discovery(self) -> None:
        device = {"identifiers": [f"ecosorter_{self.bin_id}"], "name": f"EcoSorter {self.bin_id}",
                  "manufacturer": "EcoSorter Edge"}
        avail = {"availability_topic": f"{self.base}/availability"}
        for label, name in self.labels.items():
            cfg = {"name": f"{name} today", "unique_id": f"ecosorter_{self.bin_id}_{label}_today",
                   "state_topic": f"{self.base}/state", "value_template": f"{{{{ value_json.today.counts.{label} }}}}",
                   "state_class": "total_increasing", "unit_of_measurement": "items", "device": device, **avail}
            self.client.publish(f"homeassistant/sensor/ecosorter_{self.bin_id}/{label}/config", json.dumps(cfg),
                                qos=1, retain=True)
        last = {"name": "Last item", "unique_id": f"ecosorter_{self.bin_id}_last", "state_topic": f"{self.base}/state",
                "value_template": "{{ value_json.last.label if value_json.last else 'none' }}", "device": device, **avail}
        self.client.publish(f"homeassistant/sensor/ecosorter_{self.bin_id}/last/config", json.dumps(last), qos=1, retain=True)
        health = {"name": "Health", "unique_id": f"ecosorter_{self.bin_id}_health", "device_class": "problem",
                  "state_topic": f"{self.base}/state", "value_template": "{{ 'OFF' if value_json.healthy else 'ON' }}",
                  "device": device, **avail}
        self.client.publish(f"homeassistant/binary_sensor/ecosorter_{self.bin_id}/health/config", json.dumps(health),
                            qos=1, retain=True)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            cmd = parse_command(msg.payload)
        except CommandError as e:
            log.warning("MQTT command refused: %s", e)
            self.reply({"ok": False, "error": f"malformed command: {e}"})
            return
        self.commands.put(cmd)  # handled off the network thread

    def reply(self, result: dict) -> None:
        self.client.publish(f"{self.base}/cmd/result", json.dumps(result, default=str), qos=1)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        if self.connected.is_set():
            self.client.publish(f"{self.base}/availability", "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
