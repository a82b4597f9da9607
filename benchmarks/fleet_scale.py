"""Many bins on one real Mosquitto: messages/s, broker CPU, bytes per bin, `fleet status` time per bin.

    python -m benchmarks.fleet_scale --bins 200 --procs 10 --rate 0.5 --seconds 60 [--json OUT]

Each bin is the bin's real MQTT side (edge/record/mqtt.py's MqttLink with its SQLite outbox,
the status board's state, Home Assistant discovery, last will), run `--procs` processes with
`--bins / --procs` bins each (a Python process per bin would measure this machine's memory, not the
broker). Items arrive at `--rate` per second per bin (a busy bin sorts a few hundred a day: this is
much faster, to load the broker). Reported:
  - messages/s through the broker (counted by a subscriber to every bin topic) and the broker's CPU
    share (psutil on the mosquitto process) over the same seconds, and CPU per 1000 messages/s;
  - bytes of one event and one state message, retained bytes per bin (state, availability, discovery);
  - `fleet status` (ecosorter.fleet.view.FleetView) time for all bins, per bin, against the same
    call with one bin (the baseline) in the same run.
docs/fleet.md turns these into bytes and messages per bin per day.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"kaca": "Kaca (glass)", "kardus": "Kardus (cardboard)", "kertas": "Kertas (paper)",
          "khusus": "Khusus (special/other)", "logam": "Logam (metal)", "organik": "Organik (organic)",
          "plastik": "Plastik (plastic)"}


# ------------------------------------------------------------------------ one process of bins
def worker(port: int, bins: list[str], rate: float, state: Path, stop_file: Path) -> None:
    import random

    from ecosorter.edge.config import MqttConfig
    from ecosorter.edge.record.event import Event
    from ecosorter.edge.record.events import EventLog
    from ecosorter.edge.record.mqtt import MqttLink
    from ecosorter.edge.status.board import StatusBoard

    comps = {lb: i for i, lb in enumerate(LABELS)}
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=port, keepalive_s=30)
    running = []
    for b in bins:
        log = EventLog(state / f"{b}.db", outbox=True)
        link = MqttLink(cfg, b, log.path, LABELS, compartments=comps, trusted=frozenset({"clear_fault"})).start()
        running.append((b, log, StatusBoard(b, LABELS, comps), link))
    model = {"sha256": "ab" * 32, "version": 3}
    rng = random.Random(0)
    next_item = {b: time.monotonic() + rng.random() / rate for b in bins}
    last_state = 0.0
    while not stop_file.exists():
        now = time.monotonic()
        for b, log, board, link in running:
            if now >= next_item[b]:
                next_item[b] += rng.expovariate(rate)
                label = rng.choice(list(LABELS))
                p = {lb: 0.02 for lb in LABELS}
                p[label] = 0.88
                ev = Event(label=label, confidence=0.88, probabilities=p, uncertain=rng.random() < 0.1,
                           compartment=comps[label], routed_to=comps[label], routed_ok=True, frames=3,
                           model_sha256=model["sha256"], latency_ms={"total": 40.0, "inference": 12.0}, bin_id=b)
                log.append(ev)
                board.record(ev)
                link.record(ev)
        if now - last_state >= 2.0:  # the sorter's housekeeping: state every 2 s, sent only when changed
            last_state = now
            for _, _, board, link in running:
                link.publish_state(board.snapshot(), model)
        time.sleep(0.05)
    for _, log, _, link in running:
        link.close()
        log.close()


# ------------------------------------------------------------------------ the run
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Counter:
    """A subscriber on every bin topic: messages and bytes per kind."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.n: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("ecosorter/#", qos=0)
        c.on_message = self._on
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.c = c

    def _on(self, cl, u, m) -> None:
        kind = m.topic.split("/", 2)[-1]
        with self.lock:
            self.n[kind] = self.n.get(kind, 0) + 1
            self.bytes[kind] = self.bytes.get(kind, 0) + len(m.payload) + len(m.topic)

    def take(self) -> tuple[dict, dict]:
        with self.lock:
            n, b = dict(self.n), dict(self.bytes)
            self.n.clear()
            self.bytes.clear()
        return n, b


def retained_bytes(port: int, bin_id: str) -> dict[str, int]:
    import paho.mqtt.client as mqtt

    got: dict[str, int] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe([(f"ecosorter/{bin_id}/#", 1),
                                                          (f"homeassistant/+/ecosorter_{bin_id}/#", 1)])
    c.on_message = lambda cl, u, m: got.__setitem__(m.topic, len(m.payload) + len(m.topic)) if m.retain else None
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(1.0)
    c.publish("x/sync", b"", qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()
    out = {"state": 0, "availability": 0, "home_assistant": 0}
    for t, n in got.items():
        key = "home_assistant" if t.startswith("homeassistant/") else t.rsplit("/", 1)[-1]
        out[key] = out.get(key, 0) + n
    return out


def status_time(port: int, pattern: str, expect: int, repeat: int = 3) -> tuple[float, int]:
    """Seconds from connecting until `fleet status`'s view holds the state of every bin matching
    `pattern` (best of `repeat`), and how many it saw. (The command adds a fixed wait for quiet.)"""
    import fnmatch

    from ecosorter.fleet.broker import Broker
    from ecosorter.fleet.view import FleetView

    best, n = 1e9, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        v = FleetView(Broker(host="127.0.0.1", port=port))
        v.broker.connect(v.client)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            with v.lock:
                n = sum(1 for b in v.bins.values() if b.state and fnmatch.fnmatchcase(b.bin_id, pattern))
            if n >= expect:
                break
            time.sleep(0.001)
        best = min(best, time.perf_counter() - t0)
        v.close()
    return best, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--procs", type=int, default=10)
    ap.add_argument("--rate", type=float, default=0.5, help="items per second per bin")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured time with items flowing")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        port, bins, rate, state, stop = args.worker
        worker(int(port), bins.split(","), float(rate), Path(state), Path(stop))
        return 0
    import psutil

    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n")
    broker = subprocess.Popen([exe, "-c", str(tmp / "m.conf")], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    bp = psutil.Process(broker.pid)
    names = [f"bin{i:05d}" for i in range(args.bins)]
    stop = tmp / "stop"
    procs = []
    for k in range(args.procs):
        mine = names[k::args.procs]
        if mine:
            procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.fleet_scale", "--worker", str(port),
                                           ",".join(mine), str(args.rate), str(tmp), str(stop)], cwd=ROOT))
    counter = Counter(port)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status_time(port, "*", args.bins, 1)[1] < args.bins:
            time.sleep(1)
        # warm-up: discovery and first states out of the way
        time.sleep(5)
        counter.take()
        c0, t0 = bp.cpu_times(), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = bp.cpu_times(), time.monotonic()
        n, nbytes = counter.take()
        wall = t1 - t0
        broker_cpu = (c1.user + c1.system - c0.user - c0.system) / wall
        msgs = sum(n.values())
        status_all, seen = status_time(port, "*", args.bins)
        status_one, _ = status_time(port, names[0], 1)
        retained = retained_bytes(port, names[0])
    finally:
        stop.touch()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
        counter.c.loop_stop()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "bins": args.bins, "procs": args.procs, "rate_per_bin": args.rate,
        "seconds": round(wall, 1), "messages_per_s": round(msgs / wall, 1),
        "messages_per_s_by_kind": {k: round(v / wall, 2) for k, v in sorted(n.items())},
        "bytes_per_message": {k: round(nbytes[k] / n[k]) for k in sorted(n)},
        "broker_cpu_share": round(broker_cpu, 4),
        "broker_cpu_per_1000_msgs_s": round(broker_cpu / (msgs / wall) * 1000, 4) if msgs else None,
        "fleet_status_s": round(status_all, 4), "fleet_status_bins_seen": seen,
        "fleet_status_ms_per_bin": round(1000 * status_all / max(seen, 1), 3),
        "fleet_status_one_bin_s": round(status_one, 4),
        "fleet_status_ratio_all_vs_one": round(status_all / status_one, 2),
        "retained_bytes_per_bin": retained,
        "command": "python -m benchmarks.fleet_scale " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
