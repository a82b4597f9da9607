"""The kiosk page, its JSON, item photos, page actions and Prometheus /metrics, from the StatusBoard.

A stdlib HTTP server in a daemon thread: no framework to install on the Pi, and the sorting
loop never waits for a browser. The bin stands on shared networks, so:
- at most `max_threads` requests are handled at once; further connections get a quick 503;
- every connection has a per-read timeout and a total time limit (a reaper thread shuts down
  sockets past their deadline), so half-open or trickling clients cannot hold threads;
- state-changing requests (flag, label, clear fault) need the page token AND a same-origin
  request; the token is written into the page only for the kiosk's own browser on loopback;
- the page loads its script and style from files under a strict Content-Security-Policy.
"""

from __future__ import annotations

import heapq
import hmac
import html
import ipaddress
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from ecosorter.edge.errors import ConfigError
from ecosorter.edge.status.board import StatusBoard

log = logging.getLogger("ecosorter.status")
HERE = Path(__file__).parent
STATIC = {"/page.js": ("page.js", "text/javascript; charset=utf-8"),
          "/page.css": ("page.css", "text/css; charset=utf-8"),
          "/history.js": ("history.js", "text/javascript; charset=utf-8"),
          "/history.css": ("history.css", "text/css; charset=utf-8")}
EVENT_ID = re.compile(r"[0-9a-f]{32}")  # record.event.new_event_id(): 12 hex of ms time + 20 random
TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,128}")
TOKEN_HEADER = "X-EcoSorter-Token"
MAX_BODY = 1024  # bytes; {"label": "organik"} is 20
FLAGS_KEPT = 65536  # flagged ids remembered for de-duplication
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
                    "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store"}


class _Reaper:
    """One thread that shuts down connections past their deadline (whatever they are doing)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._stopped = False
        threading.Thread(target=self._run, name="status reaper", daemon=True).start()

    def watch(self, sock: socket.socket, limit_s: float) -> None:
        with self._cond:
            self._live.add(id(sock))
            heapq.heappush(self._heap, (time.monotonic() + limit_s, id(sock), sock))
            self._cond.notify()

    def forget(self, sock: socket.socket) -> None:
        with self._cond:
            self._live.discard(id(sock))

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][1] not in self._live):
                    _, key, sock = heapq.heappop(self._heap)
                    if key in self._live:
                        self._live.discard(key)
                        try:
                            sock.shutdown(socket.SHUT_RDWR)  # the handler's read/write returns at once
                        except OSError:
                            pass
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    max_threads = 16  # concurrent requests; more connections are answered 503 and closed
    history = None  # edge.status.history.History: the /history page's data (the event log, the model)
    io_timeout_s = 5.0  # per read/write
    conn_limit_s = 10.0  # a whole connection, however it trickles

    def __init__(self, address: tuple[str, int], board: StatusBoard, on_flag=None, on_label=None,
                 on_clear_fault=None, token: str | None = None, public_read: bool = False,
                 bind_and_activate: bool = True):
        super().__init__(address, Handler, bind_and_activate)
        self.board = board
        self.public_read = public_read  # status.public_read: reads need no token from the network
        self.bound = bind_and_activate
        self._stop = threading.Event()
        self.on_flag: Callable[[str], bool] | None = on_flag
        self.on_label: Callable[[str, str, str], bool] | None = on_label
        self.on_clear_fault: Callable[[str], bool] | None = on_clear_fault
        self.token = token
        self.actions = " ".join(name for name, cb in (("flag", on_flag), ("label", on_label),
                                                      ("clear_fault", on_clear_fault)) if cb is not None)
        self._registry = None  # made on the first /metrics: the page works without prometheus-client
        self.flagged: OrderedDict[str, bool] = OrderedDict()
        self.action_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_threads)
        self._reaper = _Reaper()

    @property
    def registry(self):
        if self._registry is None:
            self._registry = metrics_registry(self.board)
        return self._registry

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            self._reaper.watch(request, self.conn_limit_s)
            threading.Thread(target=self._handle, args=(request, client_address), daemon=True).start()
        except BaseException:
            self._reaper.forget(request)
            self._slots.release()
            self.shutdown_request(request)
            raise

    def _handle(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._reaper.forget(request)
            self._slots.release()

    def handle_error(self, request, client_address) -> None:  # a client that went away: not news
        log.debug("status page: request from %s failed", client_address, exc_info=True)

    def bind_with_retry(self) -> None:
        """The port is taken (an old instance still exiting, another service): retry with back-off
        in this thread, one log line per try, until bound or shut down; sorting never waits."""
        delay = 1.0
        while not self._stop.wait(delay):
            try:
                self.server_bind()
                self.server_activate()
            except OSError as e:
                delay = min(delay * 2, 60.0)
                log.warning("status page: %s:%d still unavailable (%s); next try in %g s",
                            *self.server_address[:2], e.strerror or e, delay)
                continue
            self.bound = True
            log.warning("status page started on %s:%d after the port was free again", *self.server_address[:2])
            self.serve_forever()
            return

    def shutdown(self) -> None:
        self._stop.set()
        if self.bound:
            super().shutdown()
        self._reaper.stop()
        self.server_close()


def _refuse(sock: socket.socket) -> None:
    try:
        sock.setblocking(False)
        sock.send(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 2\r\n\r\n")
    except OSError:
        pass


class Handler(BaseHTTPRequestHandler):
    server: StatusServer
    server_version = "ecosorter"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.io_timeout_s
        super().setup()

    def log_message(self, fmt: str, *args) -> None:  # keep the journal for what matters
        log.debug("%s " + fmt, self.address_string(), *args)

    def parse_request(self) -> bool:
        """Headers later parsed as URLs (Host, Origin, Referer) must parse: `Host: [` is a 400, not a
        dropped connection."""
        if not super().parse_request():
            return False
        for name in ("Host", "Origin", "Referer"):
            try:
                _ = urlsplit(("//" if name == "Host" else "") + self.headers.get(name, "")).port
            except ValueError:
                self.send_error(400, f"bad {name} header")
                return False
        return True

    def _read_refused(self) -> bool:
        """Reads (status, metrics, photos) from the network need the token unless status.public_read;
        a loopback bind and the kiosk's own screen need none. Also `Authorization: Bearer <token>`
        (a Prometheus scrape config's `authorization` block)."""
        s = self.server
        if s.public_read or _loopback(s.server_address[0]) or self._kiosk():
            return False
        given = self.headers.get(TOKEN_HEADER, "")
        auth = self.headers.get("Authorization", "")
        if not given and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if s.token and hmac.compare_digest(given.encode(), s.token.encode()):
            return False
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Bearer realm="ecosorter"')
        self.send_header("Content-Length", "0")
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        return True

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: dict) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    # ------------------------------------------------------------------ reading
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        board = self.server.board
        path, _, query = self.path.partition("?")
        reads = path in ("/api/status", "/api/last.jpg", "/metrics", "/api/model") or \
            path.startswith(("/api/photo/", "/api/history"))
        if reads and self._read_refused():
            return
        if path == "/":
            self._send(200, self._page(), "text/html; charset=utf-8")
        elif path == "/history" or path.startswith("/api/history") or path == "/api/model":
            self._history(path, query)
        elif path in STATIC:
            name, ctype = STATIC[path]
            self._send(200, (HERE / name).read_bytes(), ctype)
        elif path == "/api/status":
            board.encode_pending()  # the photos the page is about to ask for, made here, not on the loop
            self._json(200, board.snapshot())
        elif path == "/api/last.jpg":
            self._jpeg(board.last_jpeg)
        elif path.startswith("/api/photo/") and path.endswith(".jpg"):
            event_id = path[len("/api/photo/"):-len(".jpg")]
            self._jpeg(board.photo(event_id) if EVENT_ID.fullmatch(event_id) else None)
        elif path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            snap = board.snapshot()
            self._json(200 if snap["healthy"] else 503, snap["health"])
        else:
            self._send(404, b"not found", "text/plain")

    def _jpeg(self, jpeg: bytes | None) -> None:
        if jpeg:
            self._send(200, jpeg, "image/jpeg")
        else:
            self._send(404, b"no such photo", "text/plain")

    def _history(self, path: str, query: str) -> None:
        from ecosorter.edge.status.history import HistoryError

        h = self.server.history
        if h is None:
            self._send(404, b"no history on this server", "text/plain")
        elif path == "/history":
            self._send(200, self._page("history.html"), "text/html; charset=utf-8")
        elif path == "/api/history":
            try:
                self._json(200, h.items(query))
            except HistoryError as e:
                self._json(400, {"error": str(e)})
            except Exception as e:  # a locked or damaged log is the page's answer, never the server's end
                log.warning("history: %s", e)
                self._json(503, {"error": "the event log cannot be read now"})
        elif path == "/api/model":
            self._json(200, h.model())
        elif path.startswith("/api/history/photo/") and path.endswith(".jpg"):
            self._jpeg(h.photo(path[len("/api/history/photo/"):-len(".jpg")]))
        else:
            self._send(404, b"not found", "text/plain")

    def _page(self, name: str = "page.html") -> bytes:
        token = self.server.token if self._kiosk() else ""
        return ((HERE / name).read_text()
                .replace("{{token}}", html.escape(token or "", quote=True))
                .replace("{{actions}}", html.escape(self.server.actions, quote=True))).encode()

    def _kiosk(self) -> bool:
        """The bin's own screen: a loopback client that asked for a loopback name (not a rebound DNS name)."""
        host = urlsplit("//" + self.headers.get("Host", "")).hostname or ""
        return _loopback(self.client_address[0]) and (host == "localhost" or _loopback(host))

    # ------------------------------------------------------------------ actions
    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        refused = self._refused()
        if refused:
            log.warning("page action %s from %s refused: %s", path[:80], self.client_address[0], refused)
            self._json(403, {"error": refused})
            return
        body = self._body()
        if body is None:
            return
        who = f"page@{self.client_address[0]}"
        s = self.server
        try:
            if path.startswith("/api/flag/") and s.on_flag is not None:
                self._flag(path[len("/api/flag/"):])
            elif path.startswith("/api/label/") and s.on_label is not None:
                self._label(path[len("/api/label/"):], body, who)
            elif path == "/api/clear_fault" and s.on_clear_fault is not None:
                with s.action_lock:
                    self._json(200, {"cleared": bool(s.on_clear_fault(who))})
            else:
                self._json(404, {"error": "no such action"})
        except Exception as e:  # a callback's failure is the page's answer, never the server's end
            log.exception("page action %s failed: %s", path[:80], e)
            self._json(500, {"error": "the action failed; see the bin's log"})

    def _refused(self) -> str:
        """Why this state-changing request is refused ("" if it is not): same origin AND the token."""
        host = self.headers.get("Host", "")
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site != "same-origin":
            return f"Sec-Fetch-Site is {site!r}, not same-origin"
        source = self.headers.get("Origin") or self.headers.get("Referer") or ""
        parts = urlsplit(source)
        if not host or parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return "not a same-origin request (Origin/Referer must match Host)"
        given = self.headers.get(TOKEN_HEADER, "")
        if not (self.server.token and hmac.compare_digest(given.encode(), self.server.token.encode())):
            return "missing or wrong page token"
        return ""

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self._json(411, {"error": "send a Content-Length, not chunks"})
            return None
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BODY:
            self.close_connection = True
            self._json(413, {"error": f"body must be 0..{MAX_BODY} bytes"})
            return None
        return self.rfile.read(n) if n else b""

    def _flag(self, event_id: str) -> None:
        s = self.server
        if not EVENT_ID.fullmatch(event_id):
            self._json(400, {"error": "not an event id"})
            return
        with s.action_lock:  # de-duplicated: one id is flagged (and its photo kept) once
            ok = s.flagged.get(event_id) or bool(s.on_flag(event_id))
            if ok and event_id not in s.flagged:
                s.flagged[event_id] = True
                while len(s.flagged) > FLAGS_KEPT:
                    s.flagged.popitem(last=False)
        if ok:
            s.board.flagged(event_id)
        self._json(200 if ok else 404, {"flagged": ok})

    def _label(self, event_id: str, body: bytes, who: str) -> None:
        s = self.server
        try:
            req = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            req = None
        label = req.get("label") if isinstance(req, dict) and set(req) == {"label"} else None
        if not EVENT_ID.fullmatch(event_id):
            self._json(400, {"error": "not an event id"})
        elif not isinstance(label, str) or label not in s.board.labels:
            self._json(400, {"error": f"body must be {{\"label\": one of {', '.join(s.board.labels)}}}"})
        else:
            with s.action_lock:
                ok = bool(s.on_label(event_id, label, who))
            if ok:
                s.board.labelled(event_id, label)
            self._json(200 if ok else 404, {"labelled": ok, "label": label})


def _loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


# ---------------------------------------------------------------------- /metrics
class BoardCollector:
    """Every series from one board snapshot, each with the bin's id as `bin`."""

    def __init__(self, board: StatusBoard):
        self.board = board

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        board = self.board
        s = board.snapshot()
        b = s["bin_id"]

        def family(kind, name: str, doc: str, labels: tuple[str, ...], rows):
            f = kind(name, doc, labels=["bin", *labels])
            for *values, n in rows:
                f.add_metric([b, *map(str, values)], n)
            return f

        today, totals = s["today"], s["totals"]
        comps = s["compartments"]
        yield family(GaugeMetricFamily, "ecosorter_items_today", "Items decided today, by predicted label.",
                     ("label",), today["counts"].items())
        yield family(CounterMetricFamily, "ecosorter_items", "Items decided since start, by predicted label.",
                     ("label",), totals["counts"].items())
        yield family(GaugeMetricFamily, "ecosorter_compartment_items_today",
                     "Items that physically went into each compartment today.",
                     ("compartment",), [(c["index"], c["count"]) for c in comps])
        yield family(CounterMetricFamily, "ecosorter_compartment_items",
                     "Items that physically went into each compartment since start.",
                     ("compartment",), [(c["index"], c["total"]) for c in comps])
        yield family(GaugeMetricFamily, "ecosorter_compartment_rerouted_in_today",
                     "Items meant for another compartment that went into this one today.",
                     ("compartment",), [(c["index"], c["rerouted_in"]) for c in comps])
        yield family(GaugeMetricFamily, "ecosorter_compartment_full", "1 while the compartment's fill sensor trips.",
                     ("compartment",), [(c["index"], int(c["full"])) for c in comps])
        yield family(GaugeMetricFamily, "ecosorter_unrouted_today", "Items decided but not routed today.",
                     (), [(today["unrouted"],)])
        yield family(CounterMetricFamily, "ecosorter_unrouted", "Items decided but not routed since start.",
                     (), [(totals["unrouted"],)])
        yield family(GaugeMetricFamily, "ecosorter_uncertain_today", "Uncertain items today.",
                     (), [(today["uncertain"],)])
        yield family(CounterMetricFamily, "ecosorter_uncertain", "Uncertain items since start.",
                     (), [(totals["uncertain"],)])
        yield family(GaugeMetricFamily, "ecosorter_health", "1 when the part is healthy.",
                     ("part",), [(k, int(h["ok"])) for k, h in s["health"].items()])
        model = s.get("model") or {}
        if model:  # edge/model/trust.py: who vouched for the running model, and its conversion gate
            yield family(GaugeMetricFamily, "ecosorter_model_unsigned", "1 while the running model is unsigned.",
                         (), [(int(bool(model.get("unsigned"))),)])
            yield family(GaugeMetricFamily, "ecosorter_model_unverified",
                         "1 while the running model failed its conversion gate (allowed by model.allow_unverified).",
                         (), [(int(bool(model.get("unverified_allowed"))),)])
        machine = s["machine"]
        yield family(GaugeMetricFamily, "ecosorter_machine_state", "1 for the machine's current state.",
                     ("state",), [(st, int(machine.get("state") == st)) for st in ("ready", "held", "fault")])
        seen = board.seen_names()
        for kind in ("holds", "faults", "warnings"):
            active = [e.get("name", "") for e in machine.get(kind, [])]
            yield family(GaugeMetricFamily, f"ecosorter_{kind}", f"Active {kind} by name (0: seen since start).",
                         ("name",), [(n, active.count(n)) for n in sorted(seen[kind] | set(active))])
        yield family(GaugeMetricFamily, "ecosorter_link", "1 for each link's current state.",
                     ("link", "state"), [(k, v["state"], 1) for k, v in s["links"].items()])
        buckets, sum_s = board.latency()
        h = HistogramMetricFamily("ecosorter_decision_latency_seconds",
                                  "From the item's first still frame to its routing decision.", labels=["bin"])
        h.add_metric([b], buckets=buckets, sum_value=sum_s)
        yield h
        yield family(GaugeMetricFamily, "ecosorter_uptime_seconds", "Seconds since the board started.",
                     (), [(s["uptime_s"],)])


def metrics_registry(board: StatusBoard):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(BoardCollector(board))
    return registry


def start_status_server(board: StatusBoard, bind: str = "127.0.0.1", port: int = 8080, on_flag=None,
                        on_label=None, on_clear_fault=None, token: str | None = None, public_read: bool = False,
                        history=None):
    """Serve in a daemon thread. If the port is taken, a warning, and the same thread retries with
    back-off (`server.bound` tells); None only if the address itself is unusable. Sorting goes on.

    `token` guards the page's actions. Without one a random token is made for this run: the
    kiosk's own browser (loopback) still gets it in the page, remote browsers cannot act.
    """
    if token is not None and not TOKEN.fullmatch(token):
        raise ConfigError("status.token", "16-128 characters from A-Z a-z 0-9 . _ ~ -")
    try:
        server = StatusServer((bind, port), board, on_flag, on_label, on_clear_fault,
                              token or secrets.token_urlsafe(24), public_read, bind_and_activate=False)
    except OSError as e:
        log.warning("status page not started on %s:%d: %s (status.bind)", bind, port, e)
        return None
    server.history = history
    try:
        server.server_bind()
        server.server_activate()
        server.bound = True
        run = server.serve_forever
    except OSError as e:  # EADDRINUSE: retried; the socket object stays the same
        # a page on that port is some other program's, often a second `ecosorter run` on this
        # machine: say so, or its page is read as this bin's
        log.warning("status page not started on %s:%d: %s (status.port): what answers there is another "
                    "program, not this bin (another `ecosorter run`?); give this bin another status.port "
                    "in its config, or stop the other; retrying with back-off", bind, port, e.strerror or e)
        run = server.bind_with_retry
    threading.Thread(target=run, name="status http", daemon=True).start()
    return server
