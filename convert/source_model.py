"""The user's model as saved by Keras: legacy .h5 (Keras 2), .keras (Keras 3), or a SavedModel.

Whatever the format, it becomes a `SourceModel`: a batch-1 concrete function to convert, a
batch predict to verify against, and its shapes, checked to be an image classifier.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecosorter.convert.tf_import import import_tf
from ecosorter.edge.errors import ModelError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"


@dataclass
class SourceModel:
    path: Path
    kind: str  # "h5" | "keras" | "saved_model"
    height: int
    width: int
    num_outputs: int
    sha256: str
    versions: dict[str, str]
    keras3: bool
    _call: Any = field(repr=False)
    _trackable: Any = field(repr=False)
    layer_names: tuple[str, ...] = ()  # every Keras layer, nested models included (none for a SavedModel)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(batch)).reshape(len(batch), -1).astype(np.float32)

    def tflite_converter(self):
        """A TFLiteConverter with a batch-1 input."""
        tf = import_tf()
        if self.keras3:
            # Keras 3 keeps its own variable objects, which a concrete function does not capture
            # for freezing (TFLite then outputs NaN); its own entry point handles them.
            return tf.lite.TFLiteConverter.from_keras_model(self._trackable)
        fn, trackable = self.concrete_function()
        return tf.lite.TFLiteConverter.from_concrete_functions([fn], trackable)

    def architecture(self) -> str | None:
        """"efficientnet-lite0" or "resnet50" when the layers say so (names from ecosorter-train,
        convert/efficientnet_lite.py and keras.applications), else None (a SavedModel, anything else)."""
        names: set[str] = set()
        stack = [self._trackable]
        while stack:
            m = stack.pop()
            names.add(str(getattr(m, "name", "")))
            stack += list(getattr(m, "layers", None) or []) if self.kind != "saved_model" else []
        if {"stem_relu", "head_relu"} <= names or any(n.startswith("efficientnet_lite") for n in names):
            return "efficientnet-lite0"
        if {"conv1_conv", "conv5_block3_out"} <= names or "resnet50" in names:
            return "resnet50"
        return None

    def concrete_function(self):
        tf = import_tf()
        spec = tf.TensorSpec([1, self.height, self.width, 3], tf.float32, name="image")
        fn = tf.function(lambda x: self._call(x), input_signature=[spec], autograph=False)
        return fn.get_concrete_function(), self._trackable


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fp:
            for chunk in iter(lambda: fp.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _kind(path: Path) -> str:
    if not path.exists():
        raise ModelError(path, "not found")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "saved_model"
        raise ModelError(path, "is a folder without saved_model.pb; expected a SavedModel folder, .h5 or .keras")
    head = path.read_bytes()[:8] if path.stat().st_size else b""
    if not head:
        raise ModelError(path, "is empty (0 bytes)")
    if head.startswith(HDF5_SIGNATURE):
        return "h5"
    if head.startswith(ZIP_SIGNATURE):
        return "keras"
    raise ModelError(path, f"is neither HDF5 (.h5) nor a .keras zip (first bytes {head[:8]!r}); "
                           "expected a Keras model saved with model.save()")


def load_source_model(path: str | Path) -> SourceModel:
    path = Path(path)
    kind = _kind(path)
    tf = import_tf()
    versions = {"tensorflow": tf.__version__}
    try:
        if kind == "saved_model":
            loaded = tf.saved_model.load(str(path))
            sig = loaded.signatures.get("serving_default")
            if sig is None:
                raise ModelError(path, "SavedModel has no serving_default signature")
            in_specs = sig.structured_input_signature[1]
            out_specs = sig.structured_outputs
            if len(in_specs) != 1 or len(out_specs) != 1:
                raise ModelError(path, f"found {len(in_specs)} inputs and {len(out_specs)} outputs; "
                                       "expected one image input and one probability output")
            in_name, in_spec = next(iter(in_specs.items()))
            out_name = next(iter(out_specs))
            in_shape = tuple(in_spec.shape.as_list())
            out_shape = tuple(out_specs[out_name].shape.as_list())

            def call(x, _sig=sig, _i=in_name, _o=out_name):
                return _sig(**{_i: tf.convert_to_tensor(x, tf.float32)})[_o]

            trackable, keras3, names = loaded, False, ()
        else:
            model, versions["keras"] = _load_keras(path, kind)
            if len(model.inputs) != 1 or len(model.outputs) != 1:
                raise ModelError(path, f"found {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                                       "expected one image input and one probability output")
            in_shape = tuple(model.inputs[0].shape)
            out_shape = tuple(model.outputs[0].shape)

            def call(x, _m=model):
                return _m(x, training=False)

            trackable, keras3 = model, versions["keras"].startswith("keras ")
            names = tuple(_layer_names(model))
    except ModelError:
        raise
    except Exception as e:  # h5py/keras raise many types for damaged files
        raise ModelError(path, f"cannot be loaded as a Keras model: {type(e).__name__}: {e}") from None
    _check_classifier(path, in_shape, out_shape)
    return SourceModel(path=path, kind=kind, height=int(in_shape[1]), width=int(in_shape[2]),
                       num_outputs=int(out_shape[-1]), sha256=_sha256(path), versions=versions, keras3=keras3,
                       _call=call, _trackable=trackable, layer_names=names)


def _layer_names(model):
    for layer in model.layers:
        yield layer.name
        if hasattr(layer, "layers"):
            yield from _layer_names(layer)


def _load_keras(path: Path, kind: str):
    if kind == "h5":
        # Legacy HDF5 is what Keras 2 / TF 2.15 wrote; tf-keras reads it with Keras 2 semantics.
        try:
            import tf_keras

            return tf_keras.models.load_model(str(path), compile=False), f"tf-keras {tf_keras.__version__}"
        except ImportError:
            pass
    import keras

    try:
        return keras.models.load_model(str(path), compile=False), f"keras {keras.__version__}"
    except Exception as first:
        # A .keras written by tf-keras (ecosorter-train, Keras 2 code) is not readable by Keras 3.
        try:
            import tf_keras

            return tf_keras.models.load_model(str(path), compile=False), f"tf-keras {tf_keras.__version__}"
        except Exception:
            raise first from None


def _check_classifier(path: Path, in_shape: tuple, out_shape: tuple) -> None:
    ok_in = len(in_shape) == 4 and in_shape[3] == 3 and all(isinstance(s, int) and s > 0 for s in in_shape[1:3])
    ok_out = len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] >= 2
    if not (ok_in and ok_out):
        raise ModelError(path, f"is not an image classifier: found input shape {in_shape}, output shape "
                               f"{out_shape}; expected input (None, H, W, 3) and output (None, classes)")
