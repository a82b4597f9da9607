"""The `ecosorter` CLI on real photos and on every kind of bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from ecosorter.edge.cli import main
from ecosorter.edge.errors import ImageError
from ecosorter.edge.preprocess import decode_image
from tests.conftest import DATA

PHOTO = sorted(DATA.glob("kaca/*.jpg"))[0]


def test_classify_json_lines(capsys):
    photos = sorted(DATA.glob("*/*.jpg"))[:4]
    assert main(["classify", *map(str, photos), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["image"] for x in lines] == [str(p) for p in photos]
    for x in lines:
        assert set(x) == {"image", "label", "confidence", "probabilities", "latency_ms", "decision"}
        assert set(x["decision"]) == {"label", "compartment", "compartment_name", "uncertain", "confidence"}
        assert x["label"] == max(x["probabilities"], key=x["probabilities"].get)
        assert abs(sum(x["probabilities"].values()) - 1) < 0.02 and x["latency_ms"] > 0
        assert list(x["probabilities"]) == ["kaca", "kardus", "kertas", "khusus", "logam", "organik", "plastik"]


@pytest.fixture()
def bad_images(tmp_path):
    out = {}
    (tmp_path / "zero.jpg").write_bytes(b"")
    out["zero"] = tmp_path / "zero.jpg"
    data = PHOTO.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    out["truncated"] = tmp_path / "truncated.jpg"
    (tmp_path / "notes.jpg").write_text("hello")
    out["text"] = tmp_path / "notes.jpg"
    big = Image.new("L", (10000, 10000), 200)
    big.save(tmp_path / "huge.png", optimize=False, compress_level=1)
    out["huge"] = tmp_path / "huge.png"
    return out


def test_bad_images_get_clear_messages(bad_images):
    with pytest.raises(ImageError, match=r"zero.jpg: empty file \(0 bytes\)"):
        decode_image(bad_images["zero"])
    with pytest.raises(ImageError, match="truncated.jpg: corrupt or truncated"):
        decode_image(bad_images["truncated"])
    with pytest.raises(ImageError, match="notes.jpg: not an image"):
        decode_image(bad_images["text"])
    with pytest.raises(ImageError, match=r"huge.png: 10000x10000 is 100 MP, above the 64 MP limit"):
        decode_image(bad_images["huge"])
    with pytest.raises(ImageError, match="missing.jpg: cannot open"):
        decode_image(bad_images["zero"].with_name("missing.jpg"))


def test_unusual_but_valid_images_decode(tmp_path):
    rgb = decode_image(PHOTO)
    gray = Image.fromarray(rgb).convert("L")
    gray.save(tmp_path / "gray.png")
    g = decode_image(tmp_path / "gray.png")
    assert g.shape == rgb.shape and np.array_equal(g[..., 0], g[..., 2])

    sixteen = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    sixteen.save(tmp_path / "deep.png")
    d = decode_image(tmp_path / "deep.png")
    assert d.dtype == np.uint8 and np.abs(d[..., 0].astype(int) - np.asarray(gray)).max() <= 1

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    c = decode_image(tmp_path / "cmyk.jpg")
    assert c.shape == rgb.shape and np.abs(c.astype(int) - rgb).mean() < 12

    buf = io.BytesIO()
    Image.fromarray(rgb).convert("RGBA").save(buf, "PNG")
    assert np.array_equal(decode_image(buf.getvalue()), rgb)


def test_classify_keeps_going_and_fails_at_the_end(bad_images, capsys):
    rc = main(["classify", str(bad_images["truncated"]), str(PHOTO), str(bad_images["zero"]), "--json"])
    assert rc == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert "error" in lines[0] and "label" in lines[1] and "empty file" in lines[2]["error"]


def test_model_that_is_not_tflite(tmp_path, capsys):
    (tmp_path / "m.tflite").write_bytes(PHOTO.read_bytes())
    assert main(["classify", str(PHOTO), "--model", str(tmp_path / "m.tflite")]) == 2
    assert "m.tflite: not a TFLite flatbuffer" in capsys.readouterr().err
