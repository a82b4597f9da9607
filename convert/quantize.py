"""Keras -> TFLite bytes in one of four modes, optionally keeping chosen layers in float."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ecosorter.convert.source_model import SourceModel
from ecosorter.convert.tf_import import import_tf

MODES = ("float32", "float16", "dynamic", "int8")
IO_DTYPES = ("int8", "uint8", "float32")


def _converter(src: SourceModel, mode: str, calibration: np.ndarray | None, io_dtype: str,
               progress: Callable[[Iterable], Iterable] | None = None, per_channel: bool = True):
    tf = import_tf()
    conv = src.tflite_converter()
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        if calibration is None or len(calibration) == 0:
            raise ValueError("int8 needs calibration images")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative_dataset(calibration, progress)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = getattr(tf, io_dtype)
        conv.inference_output_type = getattr(tf, io_dtype)
        # One scale per output channel of each conv (TF's default) or one per tensor (the int8 study).
        conv._experimental_disable_per_channel = not per_channel
    elif mode != "float32":
        raise ValueError(f"quantize mode {mode!r}; allowed: {', '.join(MODES)}")
    return conv


def representative_dataset(calibration: np.ndarray, progress=None):
    def gen():
        items = range(len(calibration))
        for i in (progress(items) if progress else items):
            yield [calibration[i:i + 1]]

    return gen


def convert_tflite(src: SourceModel, mode: str, calibration: np.ndarray | None = None,
                   io_dtype: str = "int8", progress=None, per_channel: bool = True) -> bytes:
    return _converter(src, mode, calibration, io_dtype, progress, per_channel).convert()


def convert_selective(src: SourceModel, calibration: np.ndarray, keep_float: Sequence[str],
                      progress=None) -> bytes:
    """int8 everywhere except the named tensors' ops, which stay float (float input/output)."""
    tf = import_tf()
    conv = _converter(src, "int8", calibration, "float32", progress)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(keep_float))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=representative_dataset(calibration[:4]), debug_options=options)
    return debugger.get_nondebug_quantized_model()
