"""What the status page costs the loop, and what a flood costs the server (part of `python -m benchmarks`,
which puts the table in docs/performance.md and docs/status-page.md; alone: python -m benchmarks.status_page).

Loopback only; every socket is closed at the end.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from ecosorter.edge.model.manifest import DEFAULT_LABELS
from ecosorter.edge.record.event import Event
from ecosorter.edge.status import StatusBoard
from ecosorter.edge.status.server import start_status_server


def event(i: int) -> Event:
    return Event(label="kaca", confidence=0.9, probabilities={"kaca": 0.9}, uncertain=False, compartment=0,
                 routed_to=0, routed_ok=True, frames=1, model_sha256="0" * 64, latency_ms={"total": 120.0})


def measure() -> dict:
    """The figures, as table rows (measure, value, note) plus the raw numbers."""
    labels = {lb.id: lb.name for lb in DEFAULT_LABELS}
    board = StatusBoard("bench", labels, {lb: i for i, lb in enumerate(labels)})
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    n = 500
    events = [event(i) for i in range(n)]

    def per_call_us(fn) -> float:  # best of 5: the machine is shared
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for ev in events:
                fn(ev)
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        return best

    record_us = per_call_us(lambda ev: board.record(ev, frame, "rgb"))
    copy_us = per_call_us(lambda ev: frame.copy())
    last = board.snapshot()["last"]["id"]
    t0 = time.perf_counter()
    jpeg = board.photo(last)
    jpeg_ms = (time.perf_counter() - t0) * 1000

    server = start_status_server(board, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}"
    with urllib.request.urlopen(base + "/api/status", timeout=10) as r:
        status_bytes = len(r.read())
    before = threading.active_count()
    flood = 1000
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    flood = min(flood, limit - 64)
    socks = [socket.create_connection(("127.0.0.1", server.server_port), timeout=60) for _ in range(flood)]
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=60) as probe:
        probe.recv(100)  # answered after the server took or refused all the others
    peak = threading.active_count()
    t0 = time.perf_counter()
    refused = 0
    while True:  # as the page does: poll again until a slot is free (silent clients time out)
        try:
            with urllib.request.urlopen(base + "/api/status", timeout=60) as r:
                r.read()
            break
        except (urllib.error.HTTPError, ConnectionError):
            refused += 1
            time.sleep(0.25)
    served_after_s = time.perf_counter() - t0
    for s in socks:
        s.close()
    server.shutdown()
    rows = [
        ("board.record() per item, 640x480 frame (on the loop)", f"{record_us:.1f} us",
         f"{record_us / copy_us:.2f}x one full-frame copy ({copy_us:.1f} us)"),
        ("photo JPEG, encoded on first request (server thread)", f"{jpeg_ms:.1f} ms", f"{len(jpeg)} bytes"),
        ("/api/status with 12 recent items", f"{status_bytes} bytes", "polled every 0.7 s"),
        (f"threads: idle, with {flood} half-open connections", f"{before} -> {peak}",
         f"cap {server.max_threads} handler threads"),
        ("page polls answered 503 until the silent ones are closed", f"{refused}, then 200 after {served_after_s:.1f} s",
         f"io_timeout_s {server.io_timeout_s:g}, conn_limit_s {server.conn_limit_s:g}"),
    ]
    return {"rows": rows, "record_us": round(record_us, 1), "copy_us": round(copy_us, 1), "jpeg_ms": round(jpeg_ms, 1),
            "status_bytes": status_bytes, "threads_before": before, "threads_peak": peak}


def main() -> None:
    r = measure()
    print("| measure | value | note |\n|---|---|---|")
    for row in r["rows"]:
        print("| " + " | ".join(row) + " |")
    print("\n" + json.dumps({k: v for k, v in r.items() if k != "rows"}))


if __name__ == "__main__":
    main()
