"""What the model expects: written by the converter into the manifest, read by the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RESIZES = ("squash",)
INTERPOLATIONS = ("nearest-pil",)
COLORS = ("bgr", "rgb")
DTYPES = ("float32", "int8", "uint8")

# The seed notebook's transform: load_img(target_size=(224, 224)) then vgg16.preprocess_input.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class PreprocessSpec:
    """tensor[..., k] = (pixel[..., k] - mean[k]) * scale, channels in `color` order."""

    resize: str = "squash"
    interpolation: str = "nearest-pil"
    color: str = "bgr"
    mean: tuple[float, float, float] = CAFFE_MEAN_BGR
    scale: float = 1.0

    def __post_init__(self) -> None:
        for name, value, allowed in (("resize", self.resize, RESIZES),
                                     ("interpolation", self.interpolation, INTERPOLATIONS),
                                     ("color", self.color, COLORS)):
            if value not in allowed:
                raise ValueError(f"preprocess.{name} = {value!r}; allowed: {', '.join(allowed)}")
        if len(self.mean) != 3:
            raise ValueError(f"preprocess.mean needs 3 values, got {len(self.mean)}")
        if not self.scale > 0:
            raise ValueError(f"preprocess.scale must be > 0, got {self.scale}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        unknown = set(d) - {"resize", "interpolation", "color", "mean", "scale"}
        if unknown:
            raise ValueError(f"preprocess has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**{**d, "mean": tuple(d.get("mean", CAFFE_MEAN_BGR))})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        return d


@dataclass(frozen=True)
class InputSpec:
    """The model's input tensor: NHWC, batch 1, with its quantization when integer."""

    height: int
    width: int
    channels: int = 3
    dtype: str = "float32"
    quant_scale: float = 0.0
    quant_zero_point: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"input.dtype = {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.channels != 3:
            raise ValueError(f"input.channels = {self.channels}; only 3-channel images are supported")
        if self.dtype != "float32" and not self.quant_scale > 0:
            raise ValueError(f"input.dtype {self.dtype} needs a quantization scale > 0")

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "channels": self.channels,
                "dtype": self.dtype, "quantization": {"scale": self.quant_scale,
                                                      "zero_point": self.quant_zero_point}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        q = d.get("quantization") or {}
        return cls(height=int(d["height"]), width=int(d["width"]), channels=int(d.get("channels", 3)),
                   dtype=str(d.get("dtype", "float32")), quant_scale=float(q.get("scale", 0.0)),
                   quant_zero_point=int(q.get("zero_point", 0)))


# Named presets for models that do not carry a manifest (and for the converter's --preprocess).
PRESETS: dict[str, PreprocessSpec] = {
    # Keras vgg16/resnet50 preprocess_input ("caffe"): the seed model's transform.
    "caffe": PreprocessSpec(color="bgr", mean=CAFFE_MEAN_BGR, scale=1.0),
    # Keras mobilenet/efficientnet-style "tf" mode: RGB scaled to [-1, 1].
    "tf": PreprocessSpec(color="rgb", mean=(127.5, 127.5, 127.5), scale=1 / 127.5),
    # RGB scaled to [0, 1] (a model trained with rescale=1/255).
    "unit": PreprocessSpec(color="rgb", mean=(0.0, 0.0, 0.0), scale=1 / 255),
    # RGB 0..255 unchanged (models with their own normalisation layer).
    "raw": PreprocessSpec(color="rgb", mean=(0.0, 0.0, 0.0), scale=1.0),
}


def preset(name: str) -> PreprocessSpec:
    if name not in PRESETS:
        raise ValueError(f"preprocess preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]
