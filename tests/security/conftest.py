"""The attacker's kit: a real broker, the real sorter in a thread, signed commands, local web servers."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.security import new_keypair, sign_command
from tests.conftest import SAMPLES
from tests.reliability.conftest import small_disk  # noqa: F401 - a real 1 MB tmpfs, as a fixture here too

DEMO = SAMPLES.parent / "demo_int8.tflite"
BIN = "bin7"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.security)


def wait(cond, timeout: float = 30.0) -> bool:
    """Poll a condition; the timeout is a limit for a hung test, not a measured duration."""
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.05)
    return bool(cond())


@pytest.fixture(scope="session")
def keys() -> tuple[str, str]:
    return new_keypair()


def versioned_model(folder: Path, version: int, name: str = "") -> Path:
    """The demo model re-embedded with another manifest version (a byte-different, real model)."""
    from ecosorter.convert.embed import embed_metadata
    from ecosorter.edge.model.loader import read_manifest

    content = DEMO.read_bytes()
    manifest = dataclasses.replace(read_manifest(content), version=version)
    out = folder / (name or f"v{version}.tflite")
    out.write_bytes(embed_metadata(content, manifest.to_json()))
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sorter_cfg(state: Path, port: int, **over):
    return load_config(overrides={
        "camera.source": "folder", "camera.device": str(SAMPLES), "camera.loop": True,
        "camera.realtime": True, "camera.fps": 40.0, "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
        "mqtt.enabled": True, "mqtt.port": port, "bin_id": BIN, "record.state_dir": str(state), **over})


class Attacker:
    """A plain MQTT client on the bin's topics: publishes commands, collects cmd/result replies."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.results: list[dict] = []
        self.retained: dict[str, bytes] = {}
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"ecosorter/{BIN}/cmd/result", qos=1)
        c.on_message = lambda cl, u, m: self.results.append(json.loads(m.payload))
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert wait(c.is_connected)
        self.client = c

    def send(self, cmd: dict | bytes, retain: bool = False) -> None:
        payload = cmd if isinstance(cmd, bytes) else json.dumps(cmd).encode()
        self.client.publish(f"ecosorter/{BIN}/cmd", payload, qos=1, retain=retain).wait_for_publish(10)

    def result(self, n: int) -> dict:
        """The n-th reply (1-based), waiting for it."""
        assert wait(lambda: len(self.results) >= n), f"no reply #{n}; got {self.results}"
        return self.results[n - 1]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained_on(port: int, topic: str) -> bytes | None:
    """What the broker holds retained on `topic` (None: nothing), asked by a fresh subscriber."""
    import paho.mqtt.client as mqtt

    got: list[bytes] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
    c.on_message = lambda cl, u, m: got.append(m.payload) if m.retain else None
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert wait(subscribed.is_set)
    # a retained message is delivered right after SUBACK; a PINGREQ/PINGRESP round trip orders after it
    probe = c.publish("probe/none", b"x", qos=1)
    probe.wait_for_publish(10)
    c.loop_stop()
    c.disconnect()
    return got[0] if got else None


@contextlib.contextmanager
def event_ids(port: int, bin_id: str = BIN) -> Iterator[list[str]]:
    """The ids of the events the broker delivers on <bin>/event, in arrival order, while inside."""
    import paho.mqtt.client as mqtt

    got: list[str] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"ecosorter/{bin_id}/event", qos=1)
    c.on_message = lambda cl, u, m: got.append(json.loads(m.payload)["id"])
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        yield got
    finally:
        c.loop_stop()
        c.disconnect()


class RunningSorter:
    """The real sorter loop in a thread, with systemd's watchdog protocol on a real socket."""

    def __init__(self, cfg, monkeypatch, tmp_path: Path):
        from ecosorter.edge.sorter import build_sorter

        self.sock_path = tmp_path / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(0.2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(self.sock_path))
        self.watchdog = 0
        self.sorter = build_sorter(cfg)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sorter.run, args=(self.stop,), daemon=True)
        self.listener = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        while not self.stop.is_set():
            try:
                msg = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.watchdog += msg.count(b"WATCHDOG=1")

    def __enter__(self) -> RunningSorter:
        self.listener.start()
        self.thread.start()
        assert wait(lambda: self.sorter.mqtt.connected.is_set())
        return self

    @property
    def items(self) -> int:
        return self.sorter.summary.items

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        self.sorter.close()
        self.listener.join(5)
        self.sock.close()


class Server:
    """A local HTTP server thread on loopback with a chosen behaviour per path; counts requests."""

    def __init__(self, routes: dict):
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def signed(private: str, action: str, **args) -> dict:
    return sign_command(private, action, args, BIN)
