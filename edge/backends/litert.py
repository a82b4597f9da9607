"""LiteRT (`ai-edge-litert`): the default. aarch64 and x86-64, Python 3.10-3.14, numpy 2."""

from __future__ import annotations

from importlib import metadata

from ecosorter.edge.backends.base import require_module


def interpreter_class() -> tuple[type, str]:
    mod = require_module("ai_edge_litert.interpreter", "pip install ai-edge-litert (not built for armv7)")
    return mod.Interpreter, metadata.version("ai-edge-litert")
