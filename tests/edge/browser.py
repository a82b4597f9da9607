"""Real headless Chromium against the real status server: shared by the page tests."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
SCREENS = {"800x480": (800, 480), "1024x600": (1024, 600)}  # the official 7-inch display, and the common one
KIOSK_SIZE = SCREENS["1024x600"]


def window(size: tuple[int, int]) -> str:
    return f"--window-size={size[0]},{size[1]}"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (CI installs it)")
    return exe


def dump_dom(url: str, profile: Path, budget_ms: int = 4000, size: tuple[int, int] = KIOSK_SIZE) -> str:
    """The page's DOM after its script ran for `budget_ms` of virtual time."""
    r = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", window(size),
                        f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                       capture_output=True, text=True, timeout=90)
    assert r.stdout.startswith("<"), r.stderr[-2000:]
    return r.stdout


def screenshot(url: str, profile: Path, out: Path, budget_ms: int = 4000, size: tuple[int, int] = KIOSK_SIZE) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    r = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", window(size),
                        f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url],
                       capture_output=True, text=True, timeout=90)
    assert out.exists() and out.stat().st_size > 5000, r.stderr[-2000:]
    return out


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None
            ) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (no port, no extra package):
    load a page, run script in it (clicks, reads), as a person at the kiosk would."""

    def __init__(self, profile: Path, size: tuple[int, int] = KIOSK_SIZE):
        import os

        child_in, self._w = os.pipe()
        self._r, child_out = os.pipe()

        def fds() -> None:  # the protocol's pipe is fd 3 (commands in) and fd 4 (replies out)
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", window(size),
                                      "--remote-debugging-pipe", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=fds)
        os.close(child_in)
        os.close(child_out)
        self.size = size
        self._buf = b""
        self._id = 0
        self.session = None

    def call(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        import json
        import os

        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        reply = self._read(lambda m: m.get("id") == self._id, method, timeout)
        assert "error" not in reply, reply["error"]
        return reply["result"]

    def _read(self, wanted, what: str, timeout: float) -> dict:
        import json
        import os
        import select

        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if wanted(msg):
                    return msg
            ready, _, _ = select.select([self._r], [], [], timeout)  # a safety net, not a measurement
            assert ready, f"chromium did not answer {what}"
            chunk = os.read(self._r, 1 << 20)
            assert chunk, "chromium exited"
            self._buf += chunk

    def open(self, url: str, timeout: float = 60) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        # the window has browser chrome; the kiosk's viewport is the whole screen
        self.call("Emulation.setDeviceMetricsOverride", {"width": self.size[0], "height": self.size[1],
                                                         "deviceScaleFactor": 1, "mobile": False})
        self.call("Page.navigate", {"url": url})
        self._read(lambda m: m.get("method") == "Page.loadEventFired", f"loading {url}", timeout)

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def wait(self, condition: str):
        """Poll a JS expression in the page until it is truthy; return its value."""
        return self.js(f"new Promise(done => {{ const f = () => {{ let v; try {{ v = ({condition}); }} "
                       f"catch (e) {{ v = null; }} v ? done(v) : setTimeout(f, 50); }}; f(); }})")

    def screenshot(self, out: Path) -> Path:
        """The viewport as it is now, as PNG."""
        import base64

        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"]))
        return out

    def close(self) -> None:
        import os

        try:
            self.call("Browser.close", timeout=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._w)
        os.close(self._r)
