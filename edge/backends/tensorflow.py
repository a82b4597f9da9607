"""tf.lite from a full TensorFlow install: the last resort (hundreds of MB, slow start-up)."""

from __future__ import annotations

from importlib import metadata

from ecosorter.edge.backends.base import require_module
from ecosorter.edge.errors import BackendError


def interpreter_class() -> tuple[type, str]:
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    else:
        raise BackendError("TensorFlow is not installed")
    tf = require_module("tensorflow", "pip install tensorflow")
    return tf.lite.Interpreter, version
