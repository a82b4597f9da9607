"""`ecosorter doctor`: each part OK, or what to do about it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ecosorter.edge.errors import EcoSorterError


def run_doctor(args) -> int:
    from ecosorter.edge.backends import available_runtimes
    from ecosorter.edge.config import DEFAULT_PATH, load_config

    results: list[tuple[str, bool, str]] = []

    def check(part: str, fn) -> object:
        try:
            detail = fn()
            results.append((part, True, str(detail)))
            return detail
        except Exception as e:  # doctor reports everything, whatever it is
            msg = str(e) if isinstance(e, EcoSorterError) else f"{type(e).__name__}: {e}"
            results.append((part, False, msg))
            return None

    path = args.config or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    cfg = check("config", lambda: load_config(path) and f"{path or 'defaults (no config file)'} is valid")
    cfg = load_config(path) if cfg else load_config(None)
    runtimes = available_runtimes()
    usable = {k: v for k, v in runtimes.items() if not v.startswith("unavailable")}
    check("backend", lambda: ", ".join(f"{k} {v}" for k, v in usable.items()) if usable else
          _fail("no TFLite runtime: pip install ai-edge-litert (" + "; ".join(runtimes.values()) + ")"))

    def model():
        from ecosorter.edge.model import load_model

        with load_model(cfg.model.path or None, cfg.model.backend) as m:
            return f"{m.path} ({m.size_bytes / 1e6:.1f} MB, {len(m.labels)} labels, {m.classifier.runtime})"

    check("model", model)

    def camera():
        from ecosorter.edge.sources import open_source

        src = open_source(cfg.camera)
        src.open()
        try:
            frame = src.read()
            if frame is None:
                _fail(f"{src.name} opened but gave no frame")
            return f"{src.name}: {frame.pixels.shape[1]}x{frame.pixels.shape[0]}"
        finally:
            src.close()

    check("camera", camera)

    def pins():
        from ecosorter.edge.hardware import make_actuator

        with make_actuator(cfg.hardware, max(cfg.hardware.compartments.values()) + 1) as act:
            return f"profile {act.profile} on pin factory {cfg.hardware.pin_factory or 'default'}"

    check("pins", pins)

    def disk():
        state = Path(cfg.record.state_dir)
        probe = state if state.exists() else state.parent
        free = shutil.disk_usage(probe).free / 1e9
        if not os.access(probe, os.W_OK):
            _fail(f"{state} is not writable by this user (run deploy/install.sh or set record.state_dir)")
        if free < 0.5:
            _fail(f"only {free:.2f} GB free under {probe}")
        return f"{state}: {free:.1f} GB free"

    check("disk", disk)
    width = max(len(p) for p, _, _ in results)
    for part, ok, detail in results:
        print(f"{part:<{width}}  {'OK  ' if ok else 'FAIL'}  {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


def _fail(msg: str):
    raise EcoSorterError(msg)
