"""The Classifier interface and its one implementation over the TFLite Interpreter API.

LiteRT, tflite-runtime and tf.lite share the Interpreter API, so each plugin only says how to
import its runtime and check that it can work here.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from ecosorter.edge.clikit import native_stderr_filtered
from ecosorter.edge.errors import BackendError
from ecosorter.edge.preprocess.spec import InputSpec


class Classifier(Protocol):
    runtime: str
    version: str
    num_threads: int
    input: InputSpec
    output_size: int

    def classify(self, tensor: np.ndarray) -> np.ndarray:
        """Input tensor (1 x H x W x 3, the model's dtype) -> float32 probabilities."""
        ...

    def close(self) -> None: ...


class InterpreterClassifier:
    def __init__(self, interpreter_cls: type, runtime: str, version: str, model_content: bytes,
                 num_threads: int | None = None):
        self.runtime, self.version = runtime, version
        self.num_threads = num_threads or os.cpu_count() or 1
        try:
            with native_stderr_filtered():  # LiteRT's "Created ... XNNPACK delegate" line, every command
                self._interp = interpreter_cls(model_content=model_content, num_threads=self.num_threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"{runtime} {version} cannot load this model: {str(e).strip()}") from None
        ins, outs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise BackendError(f"expected one input and one output tensor, got {len(ins)} and {len(outs)}")
        i, o = ins[0], outs[0]
        shape = tuple(int(s) for s in i["shape"])
        if len(shape) != 4 or shape[0] != 1:
            raise BackendError(f"input tensor shape {shape}; expected 1 x H x W x 3")
        scale, zp = i["quantization"]
        try:
            self.input = InputSpec(height=shape[1], width=shape[2], channels=shape[3],
                                   dtype=np.dtype(i["dtype"]).name, quant_scale=float(scale),
                                   quant_zero_point=int(zp))
        except ValueError as e:
            raise BackendError(f"input tensor unsupported: {e}") from None
        self.output_size = int(np.prod(o["shape"]))
        self.output_dtype = np.dtype(o["dtype"]).name
        self._out_scale, self._out_zp = o["quantization"]
        self._in_index, self._out_index = i["index"], o["index"]

    def classify(self, tensor: np.ndarray) -> np.ndarray:
        self._interp.set_tensor(self._in_index, tensor)
        self._interp.invoke()
        out = self._interp.get_tensor(self._out_index).reshape(-1)
        if self.output_dtype != "float32":
            return ((out.astype(np.float32) - self._out_zp) * np.float32(self._out_scale)).astype(np.float32)
        return out.astype(np.float32, copy=True)

    def close(self) -> None:
        self._interp = None

    def __enter__(self) -> InterpreterClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def require_module(name: str, hint: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise BackendError(f"{name} is not installed ({e}); {hint}") from None
    except Exception as e:  # a broken binary wheel fails in other ways (e.g. numpy ABI)
        raise BackendError(f"{name} failed to import: {type(e).__name__}: {e}") from None
