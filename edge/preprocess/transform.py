"""The training transform, as one gather and one table lookup per frame.

Keras trained the seed model on `load_img(target_size=(224, 224))` (PIL NEAREST squash) then
`preprocess_input` (caffe: BGR, minus the ImageNet means). Both steps are per-pixel maps:
- NEAREST picks one source row and column per output pixel. The picks depend only on the sizes,
  so they are computed once per frame size by asking PIL itself (OpenCV's INTER_NEAREST and the
  obvious floor((i + 0.5) * ratio) formula both pick other pixels for common sizes).
- The colour transform maps each 8-bit value to one number per channel, so a 3 x 256 table holds
  it, already quantized for an int8/uint8 model (mean subtraction and quantization fold into it).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from ecosorter.edge.preprocess.spec import InputSpec, PreprocessSpec

# Channel order of the pixels a source hands over. picamera2 "RGB888" and "XRGB8888" arrays are
# B,G,R(,X) in memory, so they are "bgr" here, like OpenCV frames; PIL decodes to "rgb".
PIXEL_ORDERS = ("bgr", "rgb")


@lru_cache(maxsize=32)
def nearest_indices(src_len: int, dst_len: int) -> np.ndarray:
    """Source indices that PIL's NEAREST resize picks along one axis (separable, as PIL is)."""
    ramp = Image.fromarray(np.arange(src_len, dtype=np.int32)[None, :])
    picked = np.asarray(ramp.resize((dst_len, 1), Image.NEAREST))[0].astype(np.intp)
    picked.setflags(write=False)
    return picked


def camera_roi(roi: list[float] | tuple[float, ...]) -> tuple[float, float, float, float] | None:
    """camera.roi as the Preprocessor takes it: None for the whole frame. `run` and `classify
    --config` both crop by it, so a photo decides the same in both."""
    return None if list(roi) == [0.0, 0.0, 1.0, 1.0] else (roi[0], roi[1], roi[2], roi[3])


def roi_pixels(roi: tuple[float, float, float, float] | None, height: int, width: int) -> tuple[int, int, int, int]:
    """The tray region (x, y, w, h as fractions of the frame) in pixels, clipped to the frame."""
    if roi is None:
        return 0, 0, width, height
    fx, fy, fw, fh = roi
    x0, y0 = round(fx * width), round(fy * height)
    w, h = max(1, round(fw * width)), max(1, round(fh * height))
    return x0, y0, min(w, width - x0), min(h, height - y0)


def build_table(prep: PreprocessSpec, inp: InputSpec) -> np.ndarray:
    """3 x 256 table: model-order channel k, 8-bit value v -> the tensor value."""
    v = np.arange(256, dtype=np.float32)
    # float32 arithmetic in the same order as preprocess_input: (x - mean) in float32, then scale.
    table = np.stack([(v - np.float32(m)) for m in prep.mean])
    if prep.scale != 1.0:
        table = table * np.float32(prep.scale)
    if inp.dtype == "float32":
        return table.astype(np.float32)
    info = np.iinfo(inp.dtype)
    q = np.round(table.astype(np.float64) / inp.quant_scale) + inp.quant_zero_point
    return np.clip(q, info.min, info.max).astype(inp.dtype)


class Preprocessor:
    """Frame pixels (H x W x 3 or 4, uint8) -> model input tensor (1 x h x w x 3)."""

    def __init__(self, prep: PreprocessSpec, inp: InputSpec,
                 roi: tuple[float, float, float, float] | None = None):
        self.prep = prep
        self.input = inp
        self.roi = roi  # x, y, w, h as fractions of the frame: the tray region
        self._table = build_table(prep, inp)
        self._index_cache: dict[tuple[int, int], np.ndarray] = {}
        self._out = np.empty((1, inp.height, inp.width, 3), dtype=self._table.dtype)

    def __call__(self, pixels: np.ndarray, order: str = "bgr", out: np.ndarray | None = None) -> np.ndarray:
        if order not in PIXEL_ORDERS:
            raise ValueError(f"pixel order {order!r}; allowed: {', '.join(PIXEL_ORDERS)}")
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
            raise ValueError(f"expected H x W x 3 or 4 uint8 pixels, got {pixels.shape} {pixels.dtype}")
        flat = self._flat_index(pixels.shape[0], pixels.shape[1])
        # Same channel order as the model: 0,1,2; opposite: 2,1,0. A 4th (X/alpha) is never read.
        chans = (0, 1, 2) if order == self.prep.color else (2, 1, 0)
        dst = self._out if out is None else out
        # One gather of the picked pixels (a flat take is ~4x faster than 2-D fancy indexing),
        # then one 256-entry table lookup per channel.
        picked = np.take(np.ascontiguousarray(pixels).reshape(-1, pixels.shape[2]), flat, axis=0)
        view = dst.reshape(-1, 3)
        for k, c in enumerate(chans):
            np.take(self._table[k], picked[:, c], out=view[:, k])
        return dst if out is not None else dst.copy()

    def new_buffer(self) -> np.ndarray:
        """A tensor to pass as `out=`, so a loop preprocesses every frame without allocating."""
        return np.empty_like(self._out)

    def _flat_index(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._index_cache:  # frame size rarely changes: compute once per size
            x0, y0, w, h = self._roi_pixels(height, width)
            rows = nearest_indices(h, self.input.height) + y0
            cols = nearest_indices(w, self.input.width) + x0
            self._index_cache[key] = (rows[:, None] * width + cols[None, :]).ravel()
        return self._index_cache[key]

    def _roi_pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        return roi_pixels(self.roi, height, width)
