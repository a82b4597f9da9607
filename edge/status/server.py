"""The kiosk page, its JSON, the last photo and Prometheus /metrics, from the StatusBoard.

A stdlib ThreadingHTTPServer in a daemon thread: no framework to install on the Pi, and
the sorting loop never waits for a browser.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ecosorter.edge.status.board import StatusBoard

log = logging.getLogger("ecosorter.status")
PAGE = Path(__file__).with_name("page.html")


def metrics_text(snap: dict, latency_ms: list[float]) -> str:
    lines = ["# HELP ecosorter_items_today Items sorted today, by label.", "# TYPE ecosorter_items_today gauge"]
    for label, n in snap["today"]["counts"].items():
        lines.append(f'ecosorter_items_today{{bin="{snap["bin_id"]}",label="{label}"}} {n}')
    lines += ["# TYPE ecosorter_items_total counter", f'ecosorter_items_total{{bin="{snap["bin_id"]}"}} {snap["total"]}',
              "# TYPE ecosorter_uncertain_today gauge",
              f'ecosorter_uncertain_today{{bin="{snap["bin_id"]}"}} {snap["today"]["uncertain"]}',
              "# HELP ecosorter_health 1 when the part is healthy.", "# TYPE ecosorter_health gauge"]
    for part, h in snap["health"].items():
        lines.append(f'ecosorter_health{{bin="{snap["bin_id"]}",part="{part}"}} {int(h["ok"])}')
    if latency_ms:
        import numpy as np

        lines.append("# TYPE ecosorter_decision_latency_ms summary")
        for q in (0.5, 0.9, 0.99):
            lines.append(f'ecosorter_decision_latency_ms{{quantile="{q}"}} {np.quantile(latency_ms, q):.3f}')
    lines.append(f"ecosorter_uptime_seconds {snap['uptime_s']}")
    return "\n".join(lines) + "\n"


def make_handler(board: StatusBoard, on_flag=None):
    class Handler(BaseHTTPRequestHandler):
        server_version = "ecosorter"

        def log_message(self, fmt: str, *args) -> None:  # keep the journal for what matters
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif path == "/api/status":
                self._send(200, json.dumps(board.snapshot()).encode(), "application/json")
            elif path == "/api/last.jpg":
                jpeg = board.last_jpeg
                self._send(200 if jpeg else 404, jpeg or b"no item yet", "image/jpeg" if jpeg else "text/plain")
            elif path == "/metrics":
                self._send(200, metrics_text(board.snapshot(), list(board.latency_ms)).encode(),
                           "text/plain; version=0.0.4")
            elif path == "/healthz":
                snap = board.snapshot()
                self._send(200 if snap["healthy"] else 503, json.dumps(snap["health"]).encode(), "application/json")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            if self.path.startswith("/api/flag/") and on_flag is not None:
                event_id = self.path.rsplit("/", 1)[1]
                ok = event_id.isalnum() and on_flag(event_id)
                self._send(200 if ok else 404, json.dumps({"flagged": bool(ok)}).encode(), "application/json")
            else:
                self._send(404, b"not found", "text/plain")

    return Handler


def start_status_server(board: StatusBoard, bind: str = "127.0.0.1", port: int = 8080, on_flag=None):
    """Serve in a daemon thread; None (and a warning) if the port is taken: sorting goes on."""
    try:
        server = ThreadingHTTPServer((bind, port), make_handler(board, on_flag))
    except OSError as e:
        log.warning("status page not started on %s:%d: %s (status.port)", bind, port, e)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status http", daemon=True).start()
    return server
