"""What every ecosorter command line shares: --version, quiet broken pipes, where a simulated bin keeps
its state, and the native runtimes' info lines kept off the terminal."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

# Native lines that say nothing to an operator (LiteRT prints this once per interpreter, on fd 2).
NATIVE_NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


def version() -> str:
    try:
        from importlib.metadata import version as dist_version

        return dist_version("ecosorter")
    except Exception:  # not installed (a bare checkout on the path): say so rather than guess
        return "unknown (not installed)"


def add_version(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--version", action="version", version=f"{ap.prog} {version()}",
                    help="print the version and exit")


def simulate_state_dir() -> Path:
    """Where `run --simulate` keeps its events and photos, so `label` and `export` find them later:
    $XDG_STATE_HOME/ecosorter/simulate (default ~/.local/state/ecosorter/simulate)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ecosorter" / "simulate"


def quiet_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """`ecosorter classify ... | head`: a reader that stops early ends the command quietly."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            # Python would complain again flushing stdout at exit: point it at /dev/null first.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return 141  # 128 + SIGPIPE, as a shell reports a command killed by the pipe

    return wrapped


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Run native code with fd 2 caught in a file, then pass on every line but NATIVE_NOISE.

    Only around interpreter creation (milliseconds): another thread's log line written meanwhile
    is delayed, never lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [ln for ln in caught.read().splitlines(keepends=True)
                    if ln.decode(errors="replace").strip() not in NATIVE_NOISE]
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, b"".join(kept))

