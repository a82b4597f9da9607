"""tf.lite from a full TensorFlow install: the last resort (hundreds of MB, slow start-up)."""

from __future__ import annotations

from importlib import metadata

from ecosorter.edge.backends.base import require_module
from ecosorter.edge.errors import BackendError


def installed_version() -> str:
    """Without importing TensorFlow (seconds of start-up and hundreds of MB)."""
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise BackendError("TensorFlow is not installed")


def interpreter_class() -> tuple[type, str]:
    version = installed_version()
    tf = require_module("tensorflow", "pip install tensorflow")
    return tf.lite.Interpreter, version
