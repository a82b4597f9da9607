"""Fuzzing: configs and image bytes. Never a traceback, never a hang."""

from __future__ import annotations

import io
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ecosorter.edge.config import Config, config_from_dict, load_config
from ecosorter.edge.errors import ConfigError, ImageError
from ecosorter.edge.preprocess import decode_image
from tests.conftest import DATA

SECTIONS = {"model": ["path", "backend", "num_threads"], "camera": ["source", "fps", "roi", "width", "loop"],
            "trigger": ["mode", "still_frames"], "decision": ["frames", "threshold", "class_thresholds", "fallback"],
            "hardware": ["profile", "led_pins", "compartments", "chute_angles", "interlock_pin"],
            "mqtt": ["port", "enabled"], "status": ["port", "bind"], "record": ["capture", "capture_quota_mb"]}
values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)


@st.composite
def configs(draw):
    data = {}
    for _ in range(draw(st.integers(0, 6))):
        section = draw(st.sampled_from([*SECTIONS, "bogus", "bin_id"]))
        if section in SECTIONS:
            key = draw(st.sampled_from([*SECTIONS[section], "typo_key"]))
            data.setdefault(section, {})[key] = draw(values)
        else:
            data[section] = draw(values)
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_any_config_is_valid_or_rejected_naming_the_key(data):
    try:
        assert isinstance(config_from_dict(data), Config)
    except ConfigError as e:  # every problem at once, each naming its key
        assert all(x.key and str(x).startswith("config ") for x in getattr(e, "errors", [e]))
        assert str(e).startswith("config")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_toml_text_is_valid_or_rejected(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("c") / "config.toml"
    p.write_text(text, encoding="utf-8")
    try:
        load_config(p)
    except ConfigError as e:
        assert str(e).startswith("config")


def _check(data: bytes) -> None:
    t0 = time.monotonic()
    try:
        out = decode_image(data)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    except ImageError:
        pass
    assert time.monotonic() - t0 < 1.0


JPEG = sorted(DATA.glob("*/*.jpg"))[0].read_bytes()
_buf = io.BytesIO()
Image.open(io.BytesIO(JPEG)).resize((64, 48)).save(_buf, "PNG")
PNG = _buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data):
    _check(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([JPEG, PNG]), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
       st.integers(0, 10**6))
def test_mutated_jpeg_and_png_never_crash_or_hang(base, flips, cut):
    data = bytearray(base)
    for pos, val in flips:
        data[pos % len(data)] = val
    _check(bytes(data[: max(8, cut % (len(data) + 1))]))
