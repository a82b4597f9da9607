"""A fleet on this machine: a real Mosquitto, bins as separate `ecosorter run --simulate` processes
(real sorter, real LiteRT, real MqttLink, signed commands, model store), the fleet tool as a process."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, Mosquitto

DEMO = SAMPLES.parent / "demo_int8.tflite"
ECOSORTER = [sys.executable, "-m", "ecosorter.edge.cli"]
BINS = [f"bin{i:02d}" for i in range(1, 7)]
KEEPALIVE_S = 5


def wait(cond, timeout: float = 60.0, every: float = 0.2) -> bool:
    """Poll a condition; the timeout is a limit for a hung test, not a measured duration."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return bool(cond())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versioned_model(out: Path, version: int, content: bytes | None = None) -> Path:
    """The demo model (or `content`) with its embedded manifest's version changed: a real, byte-different model."""
    from ecosorter.convert.embed import embed_metadata
    from ecosorter.edge.model.loader import read_manifest

    content = content if content is not None else DEMO.read_bytes()
    manifest = dataclasses.replace(read_manifest(content), version=version)
    out.write_bytes(embed_metadata(content, manifest.to_json()))
    return out


def uncertain_model(out: Path, version: int) -> Path:
    """The demo model with its last layer's weights and bias zeroed: it loads, its output is a
    probability vector (the self-test passes), and every item gets 1/7 on every class (uncertain)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    content = DEMO.read_bytes()
    with warnings.catch_warnings():  # "for debugging purposes only": reading constant tensors is what it's for
        warnings.simplefilter("ignore", UserWarning)
        it = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    fc = [op for op in it._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"][-1]
    flat = bytearray(content)
    for index in fc["inputs"][1:]:  # weights, bias
        raw = it.get_tensor(int(index)).tobytes()
        assert content.count(raw) == 1, "the layer's bytes must be found exactly once"
        at = content.find(raw)
        flat[at:at + len(raw)] = bytes(len(raw))
    return versioned_model(out, version, bytes(flat))


class Fleet:
    """Bins as processes on one broker; each can be killed (-9), stopped and started again."""

    def __init__(self, root: Path, broker: Mosquitto, public_key: str, model_port: int):
        self.root, self.broker, self.public_key, self.model_port = root, broker, public_key, model_port
        self.procs: dict[str, subprocess.Popen] = {}
        self.v1 = versioned_model(root / "v1.tflite", 1)

    def state_dir(self, bin_id: str) -> Path:
        return self.root / bin_id

    def prepare(self, bin_id: str) -> None:
        """A bin as installed in the field: its config and model v1 in its store (`ecosorter model install`)."""
        from ecosorter.edge.model.store import ModelStore

        d = self.state_dir(bin_id)
        d.mkdir()
        ModelStore(d).install(self.v1, allow_unsigned=True)  # as `model install --allow-unsigned`
        (d / "config.toml").write_text(f"""bin_id = "{bin_id}"
[camera]
fps = 16.0
[model]
public_key = "{self.public_key}"
download_hosts = ["127.0.0.1:{self.model_port}"]
allow_http = true
[mqtt]
enabled = true
host = "127.0.0.1"
port = {self.broker.port}
keepalive_s = {KEEPALIVE_S}
[commands]
trust_broker_for = ["clear_fault"]
[status]
enabled = false
""")

    def start(self, bin_id: str) -> None:
        d = self.state_dir(bin_id)
        log = open(d / "run.log", "ab")  # noqa: SIM115 - the process owns it
        self.procs[bin_id] = subprocess.Popen(
            [*ECOSORTER, "run", "--simulate", "--config", str(d / "config.toml"), "--state-dir", str(d),
             "--loop", "--no-status"], stdout=log, stderr=subprocess.STDOUT, cwd=self.root)

    def kill(self, bin_id: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(bin_id)
        p.send_signal(sig)
        p.wait(30)

    def close(self) -> None:
        for bin_id in list(self.procs):
            self.kill(bin_id, signal.SIGTERM)

    def fleet(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*ECOSORTER, "fleet", *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def status(self) -> dict[str, dict]:
        r = self.fleet("status", "--json", "--broker", f"127.0.0.1:{self.broker.port}")
        assert r.returncode == 0, r.stderr
        return {b["bin_id"]: b for b in json.loads(r.stdout)["bins"]}

    def models_seen(self, bin_id: str) -> set[str]:
        """Every model sha the bin ever sorted an item with (its own event log)."""
        import sqlite3

        db = sqlite3.connect(self.state_dir(bin_id) / "events.db")
        try:
            return {r[0] for r in db.execute("SELECT DISTINCT model_sha256 FROM events")}
        finally:
            db.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed; .ci/run installs it from Debian's packages")
        pytest.skip("mosquitto not installed")
    pytest.importorskip("paho.mqtt")
    from ecosorter.edge.security import new_keypair

    root = tmp_path_factory.mktemp("fleet")
    broker = Mosquitto(root)
    broker.start()
    private, public = new_keypair()
    (root / "owner.key").write_text(private + "\n")
    (root / "owner.key").chmod(0o600)
    f = Fleet(root, broker, public, free_port())
    try:
        for b in BINS:
            f.prepare(b)
            f.start(b)
        yield f
    finally:
        f.close()
        broker.stop()
