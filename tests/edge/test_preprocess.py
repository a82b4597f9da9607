"""Parity of the edge transform with Keras' training transform, on real JPEGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ecosorter.edge.preprocess import InputSpec, Preprocessor, PreprocessSpec, decode_image, nearest_indices
from tests.conftest import DATA

PHOTOS = sorted(DATA.glob("*/*.jpg"))
CAFFE = PreprocessSpec()
F32 = InputSpec(224, 224)


def keras_reference(path) -> np.ndarray:
    """The seed notebook's transform, by Keras itself."""
    keras = pytest.importorskip("keras")
    img = keras.utils.load_img(path, target_size=(224, 224))  # interpolation="nearest"
    x = keras.utils.img_to_array(img)[None]
    return keras.applications.vgg16.preprocess_input(x)


@pytest.mark.parametrize("path", PHOTOS[::3], ids=lambda p: p.name)
def test_float_tensor_is_bit_exact_for_every_pixel_layout(path):
    ref = keras_reference(path)
    rgb = decode_image(path)
    prep = Preprocessor(CAFFE, F32)
    bgr = np.ascontiguousarray(rgb[..., ::-1])                      # OpenCV frame
    xrgb = np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 255, np.uint8)], axis=2)  # picamera2 XRGB8888
    assert prep(rgb, "rgb").dtype == np.float32
    assert np.array_equal(prep(rgb, "rgb"), ref)
    assert np.array_equal(prep(bgr, "bgr"), ref)    # picamera2 RGB888 is B,G,R in memory too
    assert np.array_equal(prep(xrgb, "bgr"), ref)


def test_int8_tensor_within_one_step_of_quantized_float():
    scale, zp = 0.9803921580314636, -3  # a typical int8 input quantization for caffe inputs
    q_in = InputSpec(224, 224, dtype="int8", quant_scale=scale, quant_zero_point=zp)
    for path in PHOTOS[:6]:
        ref = keras_reference(path)
        expected = np.clip(np.round(ref / scale) + zp, -128, 127)
        got = Preprocessor(CAFFE, q_in)(decode_image(path), "rgb")
        assert got.dtype == np.int8
        assert np.abs(got.astype(int) - expected).max() <= 1


def test_uint8_input():
    q_in = InputSpec(224, 224, dtype="uint8", quant_scale=1.0, quant_zero_point=124)
    got = Preprocessor(CAFFE, q_in)(decode_image(PHOTOS[0]), "rgb")
    assert got.dtype == np.uint8 and got.min() >= 0


@pytest.mark.parametrize("size", [(640, 480), (384, 288), (1920, 1080), (150, 256), (4056, 3040)])
def test_pil_nearest_pixel_selection_not_opencv(size):
    """The picks equal PIL's own resize; OpenCV INTER_NEAREST picks other pixels."""
    cv2 = pytest.importorskip("cv2")
    w, h = size
    rng = np.random.default_rng(w)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(img).resize((224, 224), Image.NEAREST))
    ours = img[nearest_indices(h, 224)[:, None], nearest_indices(w, 224)[None, :]]
    assert np.array_equal(ours, pil)
    assert not np.array_equal(cv2.resize(img, (224, 224), interpolation=cv2.INTER_NEAREST), pil)


def test_roi_crops_the_tray_region_before_the_squash():
    rgb = decode_image(PHOTOS[0])
    h, w = rgb.shape[:2]
    roi = (0.25, 0.1, 0.5, 0.8)
    x0, y0, cw, ch = round(0.25 * w), round(0.1 * h), round(0.5 * w), round(0.8 * h)
    crop = np.ascontiguousarray(rgb[y0:y0 + ch, x0:x0 + cw])
    assert np.array_equal(Preprocessor(CAFFE, F32, roi=roi)(rgb, "rgb"), Preprocessor(CAFFE, F32)(crop, "rgb"))


def test_rejects_wrong_pixel_arrays():
    prep = Preprocessor(CAFFE, F32)
    with pytest.raises(ValueError, match="uint8"):
        prep(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="pixel order"):
        prep(np.zeros((10, 10, 3), np.uint8), "yuv")
