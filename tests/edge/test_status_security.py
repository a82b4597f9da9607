"""The status page as an attacker on the bin's network would try it: the real server, real Chromium."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from pathlib import Path

import pytest

from ecosorter.edge.errors import ConfigError
from ecosorter.edge.status.server import start_status_server
from tests.edge.browser import Browser, dump_dom, request
from tests.edge.page_states import COMPARTMENTS, LABELS, entry, item, jam, normal

TOKEN = "s3cret-page-token-42"
XSS = "<img src=x onerror=\"document.title='pwned';document.body.style.background='red'\">"


class Calls:
    """The page's callbacks, recording what reached them."""

    def __init__(self, ok: bool = True):
        self.ok, self.flags, self.labels, self.clears = ok, [], [], []

    def flag(self, event_id: str) -> bool:
        self.flags.append(event_id)
        return self.ok

    def label(self, event_id: str, label: str, who: str) -> bool:
        self.labels.append((event_id, label, who))
        return self.ok

    def clear(self, who: str) -> bool:
        self.clears.append(who)
        return self.ok


def serve(board, calls: Calls, bind: str = "127.0.0.1", public_read: bool = False):
    server = start_status_server(board, bind, 0, calls.flag, calls.label, calls.clear, token=TOKEN,
                                 public_read=public_read)
    return server, f"http://{bind}:{server.server_port}"


@pytest.fixture()
def page():
    board, calls = normal(), Calls()
    server, base = serve(board, calls)
    yield board, calls, server, base
    server.shutdown()


def post(base: str, path: str, body: bytes = b"", **headers) -> tuple[int, dict]:
    code, reply = request(base + path, "POST", body, {k.replace("_", "-"): v for k, v in headers.items()})
    return code, json.loads(reply)


def same_origin(base: str, token: str = TOKEN, **more) -> dict:
    return {"Origin": base, "X_EcoSorter_Token": token, **more}


def test_actions_need_the_token_and_the_same_origin(page):
    board, calls, _, base = page
    event_id = board.snapshot()["last"]["id"]
    path = f"/api/flag/{event_id}"
    refused = [
        {},  # a plain request from anywhere
        {"Origin": base},  # same origin, no token
        same_origin(base, token="s3cret-page-token-41"),  # wrong token
        {"X_EcoSorter_Token": TOKEN},  # token, but no Origin or Referer
        same_origin(base, Origin="http://evil.example"),  # a page elsewhere that learned the token
        same_origin(base, Origin="null"),
        {"Referer": "http://evil.example/x", "X_EcoSorter_Token": TOKEN},
        same_origin(base, Sec_Fetch_Site="cross-site"),
        same_origin(base, Sec_Fetch_Site="same-site"),
        same_origin(base, Host="evil.example"),  # a rebound DNS name: Origin must equal Host
    ]
    for headers in refused:
        code, reply = post(base, path, **headers)
        assert code == 403 and reply["error"], headers
    for action in ("/api/clear_fault", f"/api/label/{event_id}"):
        assert post(base, action, b'{"label":"kaca"}', Origin=base)[0] == 403
    assert calls.flags == calls.labels == calls.clears == []  # nothing reached the bin

    assert post(base, path, **same_origin(base, Sec_Fetch_Site="same-origin")) == (200, {"flagged": True})
    assert post(base, f"/api/label/{event_id}", b'{"label": "kertas"}',
                Referer=base + "/", X_EcoSorter_Token=TOKEN) == (200, {"labelled": True, "label": "kertas"})
    assert post(base, "/api/clear_fault", **same_origin(base)) == (200, {"cleared": True})
    assert calls.flags == [event_id] and calls.labels == [(event_id, "kertas", "page@127.0.0.1")]
    assert calls.clears == ["page@127.0.0.1"]
    recent = board.snapshot()["recent"][0]
    assert recent["id"] == event_id and recent["flagged"] and recent["true_label"] == "kertas"


def test_strict_input(page):
    board, calls, _, base = page
    event_id = board.snapshot()["last"]["id"]
    ok = same_origin(base)
    for bad_id in ("../../etc/passwd", event_id.upper(), event_id[:-1], event_id + "0", "%00" + event_id[3:]):
        assert post(base, f"/api/flag/{bad_id}", **ok)[0] == 400, bad_id
        assert post(base, f"/api/label/{bad_id}", b'{"label":"kaca"}', **ok)[0] == 400, bad_id
    for body in (b'{"label":"glass"}', b'{"label":"Kaca"}', b'{"label":["kaca"]}', b'{"label":"kaca","x":1}',
                 b'["kaca"]', b"kaca", b"\xff\xfe", b""):
        code, reply = post(base, f"/api/label/{event_id}", body, **ok)
        assert code == 400 and "kaca, kardus" in reply["error"], body
    assert post(base, f"/api/label/{event_id}", b" " * 2048, **ok)[0] == 413
    code, reply = request(base + f"/api/label/{event_id}", "POST", b'{"label":"kaca"}',
                          {**{k.replace("_", "-"): v for k, v in ok.items()}, "Content-Length": "-5"})
    assert code == 413
    assert post(base, "/api/nothing", **ok)[0] == 404
    assert request(base + "/api/photo/../../etc/passwd.jpg")[0] == 404
    assert request(base + f"/api/photo/{'f' * 32}.jpg")[0] == 404
    assert calls.flags == calls.labels == []
    with pytest.raises(ConfigError, match="status.token"):
        start_status_server(board, "127.0.0.1", 0, token="short")


def test_flags_are_deduplicated_even_when_concurrent(page):
    board, calls, _, base = page
    event_id = board.snapshot()["last"]["id"]
    replies: list = []
    threads = [threading.Thread(target=lambda: replies.append(post(base, f"/api/flag/{event_id}",
                                                                   **same_origin(base)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert replies == [(200, {"flagged": True})] * 8
    assert calls.flags == [event_id]  # its photo is kept (and counted in the quota) once


def test_a_refused_or_failing_action_is_an_answer_not_a_crash():
    board = normal()
    event_id = board.snapshot()["last"]["id"]
    calls = Calls(ok=False)
    server, base = serve(board, calls)

    def boom(*_):
        raise RuntimeError("disk on fire")

    try:
        assert post(base, f"/api/flag/{event_id}", **same_origin(base)) == (404, {"flagged": False})
        assert post(base, f"/api/flag/{event_id}", **same_origin(base)) == (404, {"flagged": False})
        assert calls.flags == [event_id] * 2  # a refusal is not remembered as done
        server.on_label = boom
        code, reply = post(base, f"/api/label/{event_id}", b'{"label":"kaca"}', **same_origin(base))
        assert code == 500 and "disk on fire" not in reply["error"]
        assert request(base + "/api/status")[0] == 200
    finally:
        server.shutdown()


def test_headers_csp_and_no_inline_script(page):
    _, _, _, base = page
    import urllib.request

    for path, ctype in (("/", "text/html"), ("/page.js", "text/javascript"), ("/page.css", "text/css"),
                        ("/api/status", "application/json")):
        with urllib.request.urlopen(base + path, timeout=10) as r:
            csp = r.headers["Content-Security-Policy"]
            assert r.headers["Content-Type"].startswith(ctype), path
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            body = r.read().decode()
        assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
        if path == "/":
            assert not re.search(r"<script[^>]*>\s*[^<\s]", body) and "<style" not in body and " style=" not in body
    js = (Path(__file__).resolve().parents[2] / "edge" / "status" / "page.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js


def test_the_token_reaches_only_the_kiosk_screen(page):
    _, _, server, base = page
    port = server.server_port
    meta = re.compile(r'<meta name="ecosorter-token" content="([^"]*)">')
    assert meta.search(request(base + "/")[1].decode()).group(1) == TOKEN
    assert meta.search(request(f"http://localhost:{port}/")[1].decode()).group(1) == TOKEN
    # The kiosk's browser visiting a name that resolves to 127.0.0.1 (DNS rebinding) gets no token.
    rebound = request(base + "/", headers={"Host": f"bin.evil.example:{port}"})[1].decode()
    assert meta.search(rebound).group(1) == ""


def lan_address() -> str | None:
    """This machine's own non-loopback address: connections to it come from a non-loopback peer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent by a UDP connect
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


@pytest.mark.browser
def test_a_remote_browser_enters_the_token_once(tmp_path):
    addr = lan_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    board, calls = normal(), Calls()
    server, base = serve(board, calls, bind=addr, public_read=True)  # a LAN browser reads without the token
    browser = Browser(tmp_path / "remote")
    try:
        meta = re.search(r'name="ecosorter-token" content="([^"]*)"', request(base + "/")[1].decode())
        assert meta.group(1) == ""  # not on the bin's screen: no token in the page
        browser.open(base + "/")
        event_id = browser.wait("!document.getElementById('wrong').hidden && document.querySelector('#recent .row')"
                                ".dataset.id")
        browser.js("document.getElementById('wrong').click()")
        assert browser.wait("!document.getElementById('tokenbox').hidden")
        assert calls.flags == []
        browser.js(f"document.getElementById('token').value = '{TOKEN}';"
                   "document.getElementById('tokenbox').requestSubmit()")
        browser.js("document.getElementById('wrong').click()")
        assert browser.wait("!document.getElementById('panel').hidden")
        browser.open(base + "/")  # stored: a reload acts without asking again
        browser.wait("document.body.dataset.seq")
        browser.js(f"document.querySelector(\"#recent .row[data-id='{event_id}'] button[data-label='kaca']\").click()")
        browser.wait("document.querySelector('#recent .row .tag.done')")
        assert browser.js("document.getElementById('tokenbox').hidden")
    finally:
        browser.close()
        server.shutdown()
    assert calls.flags == [event_id] and calls.labels == [(event_id, "kaca", f"page@{addr}")]


@pytest.mark.browser
def test_injected_names_and_details_are_text_not_markup(tmp_path):
    labels = {lb: f"{XSS}{name}" for lb, name in LABELS.items()}
    from ecosorter.edge.status import StatusBoard

    board = StatusBoard(f"bin{XSS}", labels, COMPARTMENTS)
    board.set_health("model", False, XSS)
    board.set_link("camera", f"down{XSS}", XSS)
    board.set_link(f"x{XSS}", "up", XSS)
    board.set_link("constructor", "__proto__", "")  # data keys must not reach JS prototypes
    board.set_machine({"state": "fault", "holds": [], "faults": [
        {**entry("jam", XSS, XSS, XSS, XSS), "name": XSS, "compartment": XSS}]})
    item(board, "kaca")
    item(board, "logam", routed_to=-1, note=XSS)
    server, base = serve(board, Calls())
    try:
        dom = dump_dom(base + "/#labels", tmp_path / "p")
    finally:
        server.shutdown()
    assert "<title>EcoSorter</title>" in dom
    assert 'src="x"' not in dom and "<img src=x" not in dom  # no element made from the data
    assert dom.count("&lt;img src=x onerror=") >= 10  # ...and the data is there, as text
    assert 'data-state="fault"' in dom and "Gangguan · Fault" in dom
    assert "constructor: __proto__" in dom and "status unavailable" not in dom


def test_idle_connections_cannot_grow_threads():
    """Hundreds of half-open connections on loopback: threads stay bounded, the excess is refused at once."""
    board = normal()
    server, base = serve(board, Calls())
    server.conn_limit_s = server.io_timeout_s = 120.0  # the first ones hold their slots for the whole test
    port = server.server_port
    before = threading.active_count()
    socks = []
    try:
        for _ in range(300):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=60))
        probe = socket.create_connection(("127.0.0.1", port), timeout=60)
        with probe:  # connections are served in order: by this answer all 300 were taken or refused
            assert probe.recv(100).startswith(b"HTTP/1.0 503")
        assert threading.active_count() <= before + server.max_threads
        refused = sum(s.recv(100).startswith(b"HTTP/1.0 503") for s in socks[server.max_threads:])
        assert refused == 300 - server.max_threads
    finally:
        for s in socks:
            s.close()  # the held ones end when their client goes
    end = time.monotonic() + 60
    while threading.active_count() > before and time.monotonic() < end:
        time.sleep(0.05)
    try:
        assert threading.active_count() <= before
        assert request(base + "/api/status")[0] == 200  # and the page serves again
    finally:
        server.shutdown()


def test_silent_and_trickling_clients_are_closed_by_the_server():
    board = normal()
    server, base = serve(board, Calls())
    server.conn_limit_s, server.io_timeout_s = 1.0, 30.0  # the whole-connection limit acts, not the read timeout
    port = server.server_port
    silent = socket.create_connection(("127.0.0.1", port), timeout=60)
    trickle = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        trickle.sendall(b"GET /api/status HTTP/1.0\r\n")
        for _ in range(600):  # one header byte at a time, each well inside the read timeout
            try:
                trickle.sendall(b"X")
            except OSError:
                break
            readable, _, _ = select.select([trickle], [], [], 0.1)
            if readable:
                break
        else:
            pytest.fail("a client trickling bytes was never closed")
        assert trickle.recv(100) == b""  # closed by the server, no answer
        assert silent.recv(100) == b""
        assert request(base + "/api/status")[0] == 200
    finally:
        silent.close()
        trickle.close()
        server.shutdown()


@pytest.mark.browser
def test_the_fault_banner_clears_through_the_page(tmp_path):
    board, calls = jam(), Calls()
    server, base = serve(board, calls)
    browser = Browser(tmp_path / "kiosk")
    try:
        browser.open(base + "/")
        assert browser.wait("document.querySelector('.banner.fault button')?.textContent").startswith("Sudah aman")
        browser.js("document.querySelector('.banner.fault button').click()")
        end = time.monotonic() + 30
        while not calls.clears and time.monotonic() < end:
            time.sleep(0.05)
        assert calls.clears == ["page@127.0.0.1"]
        board.set_machine({"state": "ready", "holds": [], "faults": []})  # what the machine does when it clears
        assert browser.wait("document.getElementById('banners').children.length === 0 && 'gone'") == "gone"
    finally:
        browser.close()
        server.shutdown()
