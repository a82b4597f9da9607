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


# A classifier's head: the last dense layer and its softmax (head_nodes finds them). In int8 the softmax output comes in
# steps of 1/256 and a confident model's photos pile up on the top steps, where no threshold can
# separate right from wrong (docs/training.md "The decision rule"); kept float, the probabilities
# are continuous, for ~1% of the model's compute (the body and the input stay int8).
HEAD_OPS = ("FULLY_CONNECTED", "SOFTMAX")


def convert_float_head(src: SourceModel, calibration: np.ndarray, io_dtype: str = "int8",
                       progress=None, per_channel: bool = True) -> bytes:
    """int8 body and input (`io_dtype`), the head (HEAD_OPS) computed in float: float32 output."""
    tf = import_tf()
    from tensorflow.lite.python import convert as tf_convert  # the quantizer TF's own debugger calls
    from tensorflow.lite.python import util as tf_util
    from tensorflow.lite.python.convert import _types_pb2

    conv = _converter(src, "int8", calibration, io_dtype, progress, per_channel)
    conv._experimental_calibrate_only = True  # calibrate here; quantize below with the head denylisted
    calibrated = conv.convert()
    # Float in and out around an int8 body, then the input's QUANTIZE op removed (as the converter
    # does for inference_input_type), so the edge still feeds int8 from its lookup table.
    quantized = tf_convert.mlir_quantize(
        calibrated, disable_per_channel=not per_channel, fully_quantize=False,
        inference_type=_types_pb2.QUANTIZED_INT8, denylisted_nodes=head_nodes(calibrated))
    return tf_util.modify_model_io_type(quantized, getattr(tf, io_dtype), tf.float32)


def head_nodes(model: bytes) -> list[str]:
    """Output tensor names of the SOFTMAX and of the FULLY_CONNECTED that feeds it: only the last
    dense layer, so a head with several (the seed ResNet50's) keeps the others int8."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    made_by = {o: op for op in ops for o in op["outputs"]}
    nodes = []
    for op in ops:
        if op["op_name"] == "SOFTMAX":
            nodes.append(names[op["outputs"][0]])
            src = made_by.get(op["inputs"][0])
            if src is not None and src["op_name"] == "FULLY_CONNECTED":
                nodes.append(names[src["outputs"][0]])
    return nodes


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


# The projection convs of an MBConv block (a linear bottleneck, BatchNorm folded in): where the
# drift analysis finds EfficientNet-Lite's int8 error (docs/int8_study.md).
PROJECTION_CONVS = r"_project_conv"


def _op_config(float_compute: bool) -> dict:
    weights = {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE", "dtype": "INT"}
    if float_compute:  # int8 weights in the file, dequantized once, computed in float
        return {"weight_tensor_config": weights, "compute_precision": "FLOAT", "explicit_dequantize": True,
                "skip_checks": False, "min_weight_elements": 0}
    return {"activation_tensor_config": {"num_bits": 8, "symmetric": False, "granularity": "TENSORWISE",
                                         "dtype": "INT"},
            "weight_tensor_config": weights, "compute_precision": "INTEGER", "explicit_dequantize": False,
            "skip_checks": False, "min_weight_elements": 0}


def convert_mixed(src: SourceModel, calibration: np.ndarray, float_ops: str = PROJECTION_CONVS,
                  progress=None) -> bytes:
    """int8 everywhere (per-channel weights, int8 input and output), except the CONV_2D ops whose
    output tensor name matches `float_ops`: their weights stay int8 in the file but they compute
    in float, so their output keeps its precision (Google's ai-edge-quantizer: recipe a8w8 plus
    weight-only int8 on those ops). Measured against int16 activations in docs/int8_study.md."""
    try:
        from ai_edge_quantizer import quantizer
    except ImportError:
        raise ImportError("mixed precision needs the PyPI package ai-edge-quantizer "
                          "(pip install 'ecosorter[convert]')") from None
    from ai_edge_litert.interpreter import Interpreter

    float_model = convert_tflite(src, "float32")
    steps = [{"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize",
              "op_config": _op_config(False)}]
    if float_ops:
        steps.append({"regex": float_ops, "operation": "CONV_2D", "algorithm_key": "min_max_uniform_quantize",
                      "op_config": _op_config(True)})
    q = quantizer.Quantizer(float_model, steps)
    key, signature = next(iter(Interpreter(model_content=float_model).get_signature_list().items()))
    items = range(len(calibration))
    data = {key: [{signature["inputs"][0]: calibration[i:i + 1]} for i in (progress(items) if progress else items)]}
    result = q.quantize(q.calibrate(data, num_threads=2), enable_progress_report=False)
    return bytes(result.quantized_model)
