"""systemd integration without dependencies: sd_notify over $NOTIFY_SOCKET, journald-friendly logs."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys


class Notifier:
    """READY=1 once, WATCHDOG=1 only while frames and decisions flow, STOPPING=1 on the way out."""

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        if addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() else 0.0

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *states: str) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendto("\n".join(states).encode(), self._addr)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time, not the one at setup (a replaced and closed
    stream, as under pytest's capture, would otherwise turn every later record into a logging error)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


def setup_logging(verbose: bool = False) -> None:
    """Under systemd, stderr goes to the journal: no timestamps (journald adds them), levels as <N>."""
    level = logging.DEBUG if verbose else logging.INFO
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "<%(levelno_sd)s>%(name)s: %(message)s"

        class SdFormatter(logging.Formatter):
            MAP = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

            def format(self, record: logging.LogRecord) -> str:
                record.levelno_sd = self.MAP.get(record.levelno, 6)
                return super().format(record)

        handler = _StderrHandler()
        handler.setFormatter(SdFormatter(fmt))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
