"""tflite-runtime 2.14: the last release, for armv7 and Python <= 3.11. Built against numpy 1:
under numpy 2 its import dies with `_ARRAY_API not found`, so check before importing."""

from __future__ import annotations

from importlib import metadata

import numpy as np

from ecosorter.edge.backends.base import require_module
from ecosorter.edge.errors import BackendError


def interpreter_class() -> tuple[type, str]:
    try:
        version = metadata.version("tflite-runtime")
    except metadata.PackageNotFoundError:
        raise BackendError("tflite-runtime is not installed; prefer ai-edge-litert") from None
    if int(np.__version__.split(".")[0]) >= 2:
        raise BackendError(f"tflite-runtime {version} needs numpy<2 but numpy {np.__version__} is "
                           "installed; use ai-edge-litert, or pip install 'numpy<2'")
    mod = require_module("tflite_runtime.interpreter", "pip install tflite-runtime 'numpy<2'")
    return mod.Interpreter, version
