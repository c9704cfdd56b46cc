"""Image preprocessing recorded at build time and reproduced exactly by every client.

The build writes these fields into ``config.pbtxt`` ``parameters`` (keys
``preprocess_*``), so any client - ours, a raw tritonclient script, or curl plus a few
lines of numpy - can turn an image into the tensor the engine was verified with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sft_engine.errors import ConfigError
from sft_engine.pixels import CROP_MODES, DEFAULT_MAX_IMAGE_PIXELS, INTERPOLATIONS, PixelPipeline

__all__ = ["Preprocessing", "IMAGENET_MEAN", "IMAGENET_STD", "load_image", "resize_size_for"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PREFIX = "preprocess_"


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input tensor.

    Steps, in order: convert to RGB; resize with ``resize`` (the interpolation:
    bilinear, bicubic ...; Pillow, antialiased as timm and torchvision are on PIL
    images) to ``resize_size`` by ``crop_mode`` (``squash``, ``center``, ``border``)
    and crop (or pad) to ``input_size``×``input_size``; scale to [0, 1]; subtract
    ``mean``, divide by ``std`` per channel; lay out as ``layout`` (NCHW) float32.

    ``resize_size`` ``None`` means ``input_size``: with ``squash`` that is the plain
    resize every build made before crop modes were recorded, and what a config
    without ``preprocess_crop_mode`` / ``preprocess_resize_size`` still means. timm's
    ``crop_pct`` becomes ``resize_size_for(input_size, crop_pct)`` (its own floor),
    torchvision's ``resize_size`` is taken as it is. The steps themselves live in
    ``sft_engine.pixels``, the file the served preprocessing model runs; this class
    validates and records the parameters.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layout: str = "NCHW"
    color: str = "RGB"
    resize: str = "bilinear"
    scale: float = 1.0 / 255.0
    resize_size: int | None = None
    crop_mode: str = "squash"
    antialias: bool = True
    channels: int = field(default=3, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or not 8 <= self.input_size <= 4096:
            raise ConfigError(f"input size {self.input_size!r} is out of range", hint="pass --input-size between 8 and 4096")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3:
                raise ConfigError(f"--{name} needs 3 values (R,G,B), got {len(values)}", hint=f"e.g. --{name} 0.5,0.5,0.5")
            object.__setattr__(self, name, values)
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"--std values must be > 0, got {self.std}", hint="e.g. --std 0.229,0.224,0.225")
        if self.layout != "NCHW" or self.color != "RGB":
            raise ConfigError(f"unsupported preprocessing {self.layout}/{self.color}", hint="use NCHW, RGB")
        if self.resize not in INTERPOLATIONS:
            raise ConfigError(f"unsupported interpolation {self.resize!r}", hint=f"use one of: {', '.join(INTERPOLATIONS)}")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"unsupported crop mode {self.crop_mode!r}", hint=f"use one of: {', '.join(CROP_MODES)}")
        if self.resize_size is not None and (not isinstance(self.resize_size, int) or not 8 <= self.resize_size <= 8192):
            raise ConfigError(f"resize size {self.resize_size!r} is out of range", hint="pass a resize size between 8 and 8192, or none")
        if self.antialias is not True:
            raise ConfigError("unantialiased resizing is not supported", hint="Pillow antialiases as timm and torchvision do on PIL images; use antialias=True")

    @property
    def crop_pct(self) -> float:
        """timm's name for ``input_size / resize_size``."""
        return self.input_size / (self.resize_size or self.input_size)

    def describe(self) -> str:
        """One line: ``224 <- center 256, bicubic, mean 0.5,0.5,0.5 std 0.5,0.5,0.5``."""
        resize = f"{self.crop_mode} {self.resize_size or self.input_size}"
        fmt = lambda values: ",".join(f"{v:g}" for v in values)  # noqa: E731
        return f"{self.input_size} <- {resize}, {self.resize}, mean {fmt(self.mean)} std {fmt(self.std)}"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Input dims without the batch dimension."""
        return (self.channels, self.input_size, self.input_size)

    # -- Triton config parameters ----------------------------------------------------
    def to_parameters(self) -> dict[str, str]:
        return {
            _PREFIX + "input_size": str(self.input_size),
            _PREFIX + "mean": ",".join(repr(v) for v in self.mean),
            _PREFIX + "std": ",".join(repr(v) for v in self.std),
            _PREFIX + "layout": self.layout,
            _PREFIX + "color": self.color,
            _PREFIX + "resize": self.resize,
            _PREFIX + "scale": repr(self.scale),
            # written only where they differ from the plain resize, so those configs stay as they were
            **({_PREFIX + "crop_mode": self.crop_mode} if self.crop_mode != "squash" else {}),
            **({_PREFIX + "resize_size": str(self.resize_size)} if self.resize_size not in (None, self.input_size) else {}),
        }

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any]) -> "Preprocessing":
        """Read back from a config's ``parameters`` (protobuf or JSON form)."""

        def get(key: str, default: str | None = None) -> str:
            value = params.get(_PREFIX + key, default)
            if value is None:
                raise ConfigError(f"model config has no parameter {_PREFIX + key}", hint="rebuild the model with sft-engine build")
            if isinstance(value, Mapping):
                value = value.get("string_value", "")
            elif hasattr(value, "string_value"):
                value = value.string_value
            return str(value)

        return cls(
            input_size=int(get("input_size")),
            mean=tuple(float(v) for v in get("mean").split(",")),  # type: ignore[arg-type]
            std=tuple(float(v) for v in get("std").split(",")),  # type: ignore[arg-type]
            layout=get("layout"),
            color=get("color"),
            resize=get("resize"),
            scale=float(get("scale")),
            resize_size=int(get("resize_size", "0")) or None,
            crop_mode=get("crop_mode", "squash"),
            antialias=get("antialias", "true").lower() == "true",
        )

    # -- applying it -----------------------------------------------------------------
    def image_to_array(self, image: Any) -> np.ndarray:
        """One image (path, PIL image, or HWC uint8 array) → CHW float32."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            image = load_image(image)
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ConfigError(f"array image must be HWC or HW uint8, got {image.dtype} {image.shape}", hint="pass uint8 pixels, or a ready NCHW float32 batch")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise ConfigError(f"cannot use a {type(image).__name__} as an image", hint="pass a file path, a PIL image or an HWC uint8 array")
        return self.pipeline().image_to_array(image)

    def pipeline(self, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> PixelPipeline:
        """The shared pixel pipeline (``sft_engine.pixels``) with these parameters.

        The same file runs as the ``<name>_preprocess`` model, so a client-side and
        a server-side ``classify`` of one image see the same tensor.
        """
        return PixelPipeline(self.input_size, self.mean, self.std, self.scale, max_image_pixels,
                             resize_size=self.resize_size, crop_mode=self.crop_mode, interpolation=self.resize)

    def batch(self, images: Iterable[Any]) -> np.ndarray:
        """Many images → NCHW float32 batch."""
        arrays = [self.image_to_array(img) for img in images]
        if not arrays:
            raise ConfigError("no images given", hint="pass at least one image")
        return np.stack(arrays)

    def normalize_tensor(self, images01: np.ndarray) -> np.ndarray:
        """NCHW float in [0, 1] → normalized NCHW float32 (used for calibration data)."""
        mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
        return ((images01.astype(np.float32) - mean) / std).astype(np.float32)


def resize_size_for(input_size: int, crop_pct: float) -> int:
    """timm's resize size for ``crop_pct``: ``floor(input_size / crop_pct)`` (``transforms_imagenet_eval``)."""
    import math

    if not 0.05 <= float(crop_pct) <= 4.0:
        raise ConfigError(f"crop_pct {crop_pct!r} is out of range", hint="pass a crop_pct such as 0.875, 0.95 or 1.0")
    return math.floor(input_size / float(crop_pct))


def load_image(path: str | Path) -> Any:
    """Open an image file, with a clear error naming the file when it is unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise ConfigError(f"image {path} does not exist", hint="check the path") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"image {path} cannot be read ({exc.__class__.__name__})", hint="pass a PNG or JPEG file") from None


def parse_floats(text: str | Sequence[float], flag: str) -> tuple[float, ...]:
    """``"0.5,0.5,0.5"`` → floats, with a one-line error naming the flag."""
    if not isinstance(text, str):
        return tuple(float(v) for v in text)
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated numbers, got {text!r}", hint=f"e.g. {flag} 0.5,0.5,0.5") from None
