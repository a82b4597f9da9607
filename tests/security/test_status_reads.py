"""Issue 18 item 14 (the page): reads need the token off loopback unless status.public_read, a bad
Host header is a 400, and a page port already taken is retried. The real server, real sockets."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from ecosorter.edge.status.server import start_status_server
from tests.edge.browser import request
from tests.edge.page_states import normal
from tests.security.conftest import wait

TOKEN = "s3cret-page-token-42"
READS = ["/api/status", "/metrics", "/api/last.jpg", f"/api/photo/{'a' * 32}.jpg", "/api/history", "/api/model",
         f"/api/history/photo/{'a' * 32}.jpg", "/api/history?class=kaca"]


def lan_address() -> str | None:
    """This machine's own non-loopback address, to be a client from the network (None if it has none)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent, the kernel only picks a source address
        ip = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ip.startswith("127.") else ip


def raw(port: int, text: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:  # a limit for a hung server only
        c.sendall(text.encode())
        c.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := c.recv(4096):
            out += chunk
        return out


@pytest.fixture()
def lan_page():
    board = normal()
    server = start_status_server(board, "0.0.0.0", 0, token=TOKEN)
    yield server.server_port
    server.shutdown()


def test_reads_from_the_network_need_the_token(lan_page):
    port = lan_page
    lan = f"http://127.0.0.1:{port}"
    host = {"Host": f"bin7.local:{port}"}  # what a browser on the LAN sends: not the kiosk
    for path in READS:
        code, _ = request(lan + path, headers=host)
        assert code == 401, path
        code, _ = request(lan + path, headers={**host, "X-EcoSorter-Token": "wrong-token-0000000"})
        assert code == 401, path
    assert request(lan + "/api/status", headers={**host, "X-EcoSorter-Token": TOKEN})[0] == 200
    code, body = request(lan + "/metrics", headers={**host, "Authorization": f"Bearer {TOKEN}"})  # Prometheus
    assert code == 200 and b"ecosorter_items" in body
    assert request(lan + "/", headers=host)[0] == 200  # the page itself (without the token in it)
    assert request(lan + "/api/status")[0] == 200  # the kiosk's own screen: loopback, loopback Host
    ip = lan_address()
    if ip is not None:  # a real client from another address, even claiming a loopback Host
        code, _ = request(f"http://{ip}:{port}/api/status", headers={"Host": f"127.0.0.1:{port}"})
        assert code == 401


def test_public_read_and_a_loopback_bind_need_no_token():
    for bind, public in (("0.0.0.0", True), ("127.0.0.1", False)):
        server = start_status_server(normal(), bind, 0, token=TOKEN, public_read=public)
        try:
            code, _ = request(f"http://127.0.0.1:{server.server_port}/api/status",
                              headers={"Host": f"bin7.local:{server.server_port}"})
            assert code == 200, (bind, public)
        finally:
            server.shutdown()


@pytest.mark.parametrize("header", ["Host: [", "Host: a:b", "Origin: http://[x"])
def test_a_host_header_that_is_not_a_host_answers_400(lan_page, header):
    reply = raw(lan_page, f"GET / HTTP/1.1\r\n{header}\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400") or reply.startswith(b"HTTP/1.1 400"), reply[:80]
    assert request(f"http://127.0.0.1:{lan_page}/healthz")[0] in (200, 503)  # and it serves on


def test_a_port_already_taken_is_retried_with_back_off_while_the_bin_sorts(tmp_path, caplog):
    from ecosorter.edge.config import load_config
    from ecosorter.edge.sorter import build_sorter
    from tests.conftest import SAMPLES

    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0})
    with build_sorter(cfg, state_dir=tmp_path / "state") as sorter, caplog.at_level(logging.WARNING):
        t0 = time.monotonic()
        server = start_status_server(sorter.board, "127.0.0.1", port, token=TOKEN)
        assert server is not None and not server.bound
        try:
            assert sorter.run(max_items=5).items == 5  # sorting unaffected meanwhile
            assert wait(lambda: "still unavailable" in caplog.text, 60)  # a log line per try, with the next delay
            assert "retrying with back-off" in caplog.text
            assert "not this bin (another `ecosorter run`?); give this bin another status.port" in caplog.text
            squatter.close()
            assert wait(lambda: server.bound, 30)
            code, _ = request(f"http://127.0.0.1:{port}/api/status")
            assert code == 200
            print(f"\npage up {time.monotonic() - t0:.1f} s after start, the port freed meanwhile")
        finally:
            server.shutdown()
