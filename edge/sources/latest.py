"""A capture thread that keeps only the newest frame, and notices a camera that stops.

Inference is slower than the camera, so a queue would only hold stale frames: the consumer
always gets the newest one. The thread reopens a failed source with exponential back-off; a
source whose frames stop coming (stalled) or never change (frozen: real sensors always have
noise) is closed and reopened. If a driver hangs inside read(), frames stop, the loop stops
petting the systemd watchdog, and systemd restarts the service.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ecosorter.edge.sources.base import Frame, FrameSource


@dataclass
class SourceHealth:
    state: str = "starting"  # starting | ok | slow | stalled | frozen | failed | ended
    error: str = ""
    reopens: int = 0
    fps: float = 0.0
    since: float = field(default_factory=time.monotonic)


class LatestFrameReader:
    def __init__(self, source: FrameSource, stall_timeout_s: float = 3.0, backoff_max_s: float = 30.0,
                 backoff_start_s: float = 0.5, expected_fps: float = 0.0):
        self.source = source
        self.expected_fps = expected_fps
        # The capture thread is known to be alive (delivering, or deliberately waiting to
        # reopen) until this time; a thread stuck inside a driver call stops extending it.
        self.alive_until = time.monotonic() + stall_timeout_s
        self.stall_timeout_s, self.backoff_max_s, self.backoff_start_s = stall_timeout_s, backoff_max_s, backoff_start_s
        self.health = SourceHealth()
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._delivered = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_new = time.monotonic()
        self._fingerprint: bytes | None = None
        self._same_since = time.monotonic()

    def start(self) -> LatestFrameReader:
        self._thread = threading.Thread(target=self._run, name=f"capture {self.source.name}", daemon=True)
        self._thread.start()
        return self

    def _set(self, state: str, error: str = "") -> None:
        if state != self.health.state or error != self.health.error:
            self.health.state, self.health.error, self.health.since = state, error, time.monotonic()

    def _run(self) -> None:
        backoff = self.backoff_start_s
        opened = False
        times: list[float] = []
        while not self._stop.is_set():
            if not opened:
                try:
                    self.source.open()
                    opened = True
                    self._last_new = time.monotonic()
                except Exception as e:
                    self._set("failed", str(e))
                    self.alive_until = time.monotonic() + backoff + self.stall_timeout_s
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    self.health.reopens += 1
                    continue
            try:
                frame = self.source.read()
            except Exception as e:
                self._set("failed", str(e))
                opened = self._close_quietly()
                continue
            if frame is None:
                self._set("ended")
                with self._cond:
                    self._cond.notify_all()
                return
            now = time.monotonic()
            self.alive_until = now + self.stall_timeout_s
            window = max(2.0, 3.0 / self.expected_fps) if self.expected_fps else 2.0
            times = [t for t in times if now - t < window] + [now]
            self.health.fps = (len(times) - 1) / max(1e-6, times[-1] - times[0]) if len(times) > 1 else 0.0
            if self._frozen(frame, now):
                # stays "frozen" until a different image arrives, even across reopens
                self._set("frozen", f"the same image for {self.stall_timeout_s:g} s (camera frozen)")
                opened = self._close_quietly()
                self.alive_until = now + backoff + self.stall_timeout_s
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            backoff = self.backoff_start_s
            self._last_new = now
            slow = (self.expected_fps and len(times) >= 3 and self.health.fps < 0.5 * self.expected_fps)
            if slow:
                self._set("slow", f"{self.health.fps:.1f} fps, expected {self.expected_fps:g}")
            elif self.health.state != "ok":
                self._set("ok")
            with self._cond:
                self._latest = frame
                self._cond.notify_all()
        self._close_quietly()

    def _frozen(self, frame: Frame, now: float) -> bool:
        fp = np.ascontiguousarray(frame.pixels[::16, ::16]).tobytes()
        if fp != self._fingerprint:
            self._fingerprint, self._same_since = fp, now
            return False
        return now - self._same_since > self.stall_timeout_s

    def _close_quietly(self) -> bool:
        try:
            self.source.close()
        except Exception:  # closing a dead device may fail too; we reopen anyway
            pass
        self.health.reopens += 1
        return False

    def get(self, timeout: float) -> Frame | None:
        """The newest frame not yet returned, waiting up to `timeout`; None if none came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.seq == self._delivered:
                if self.health.state == "ended":
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    self._check_stall()
                    return None
                self._cond.wait(left)
            self._delivered = self._latest.seq
            return self._latest

    def _check_stall(self) -> None:
        if self.health.state in ("ok", "slow") and time.monotonic() - self._last_new > self.stall_timeout_s:
            self._set("stalled", f"no frame for {self.stall_timeout_s:g} s")
            # Closing from here usually makes a blocked read() fail, and the thread reopens.
            with contextlib.suppress(Exception):
                self.source.close()

    @property
    def ended(self) -> bool:
        return self.health.state == "ended"

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
