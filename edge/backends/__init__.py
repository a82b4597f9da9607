"""Stage 3: one `Classifier` interface, one plugin file per TFLite runtime.

`open_classifier("auto", ...)` tries LiteRT, then tflite-runtime, then TensorFlow Lite, and
remembers why each one it skipped was unusable, so `doctor` and errors can say what to install.
"""

from __future__ import annotations

from collections.abc import Callable

from ecosorter.edge.backends import litert, tensorflow, tflite_runtime
from ecosorter.edge.backends.base import Classifier, InterpreterClassifier
from ecosorter.edge.errors import BackendError

# name -> function returning the runtime's Interpreter class (raises BackendError if unusable)
RUNTIMES: dict[str, Callable[[], tuple[type, str]]] = {
    "litert": litert.interpreter_class,
    "tflite-runtime": tflite_runtime.interpreter_class,
    "tensorflow": tensorflow.interpreter_class,
}
BACKEND_NAMES = ("auto", *RUNTIMES)


def available_runtimes() -> dict[str, str]:
    """name -> version, or the reason it cannot be used here (TensorFlow is not imported)."""
    out = {}
    for name, get in RUNTIMES.items():
        try:
            out[name] = tensorflow.installed_version() if name == "tensorflow" else get()[1]
        except BackendError as e:
            out[name] = f"unavailable: {e}"
    return out


def open_classifier(model_content: bytes, backend: str = "auto", num_threads: int | None = None) -> Classifier:
    if backend not in BACKEND_NAMES:
        raise BackendError(f"backend {backend!r} is unknown; allowed: {', '.join(BACKEND_NAMES)}")
    names = list(RUNTIMES) if backend == "auto" else [backend]
    reasons = []
    for name in names:
        try:
            cls, version = RUNTIMES[name]()
        except BackendError as e:
            reasons.append(f"{name}: {e}")
            continue
        return InterpreterClassifier(cls, name, version, model_content, num_threads)
    raise BackendError("no TFLite runtime usable here (" + "; ".join(reasons) + "). "
                       "Install one: pip install 'ecosorter[edge]' (ai-edge-litert)")


__all__ = ["BACKEND_NAMES", "Classifier", "available_runtimes", "open_classifier"]
