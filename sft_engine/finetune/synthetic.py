"""A procedurally generated image-classification dataset: no files, no network.

Each class is one (shape, texture) pair - a disk with horizontal stripes, a checkered
cross, ... - drawn at a random position, scale, tilt and colour over a noisy
background. Class identity is carried only by shape and texture, never by colour or
place, so a network has to learn real spatial features, and those features transfer
between tasks.

Two variants share the same 24 (shape, texture) pairs in opposite orders: task ``a``
uses the first ``N`` pairs, task ``b`` the last ``N``. While the two class counts add
up to at most 24 the tasks have no class in common but the same visual vocabulary,
which is what a pretrain-on-A, fine-tune-on-small-B experiment needs.

Every image is a pure function of ``(seed, variant, split, index)``: the same seed
gives the same dataset on every machine and in every DataLoader worker.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sft_engine.errors import ConfigError

__all__ = [
    "SHAPES",
    "TEXTURES",
    "MAX_CLASSES",
    "synthetic_classes",
    "synthetic_labels",
    "render_image",
    "SyntheticDataset",
    "make_synthetic_images",
]

SHAPES = ("disk", "square", "triangle", "cross", "ring", "diamond")
TEXTURES = ("plain", "hstripes", "vstripes", "checker")
MAX_CLASSES = len(SHAPES) * len(TEXTURES)
_VARIANTS = {"a": 1, "b": 2}
_SPLITS = {"train": 1, "val": 2, "images": 3}
#: datasets up to this many bytes of pixels are rendered once and kept in memory
_CACHE_BYTES = 64 << 20


def _pair_table() -> list[tuple[int, int]]:
    """All (shape, texture) pairs, ordered so that neighbours differ in both.

    Pair ``k`` is ``(k mod 6, (k mod 6 + k div 6) mod 4)``: the first four classes are
    four different shapes with four different textures, the easiest 4-class task.
    """
    n_shapes, n_textures = len(SHAPES), len(TEXTURES)
    return [(k % n_shapes, (k % n_shapes + k // n_shapes) % n_textures) for k in range(MAX_CLASSES)]


def synthetic_classes(num_classes: int, variant: str = "a") -> list[tuple[int, int]]:
    """The (shape index, texture index) of each class of ``variant``."""
    if variant not in _VARIANTS:
        raise ConfigError(f"unknown synthetic variant {variant!r}", hint="choose 'a' or 'b'")
    if not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_CLASSES:
        raise ConfigError(
            f"the synthetic dataset has 2 to {MAX_CLASSES} classes, not {num_classes!r}",
            hint=f"pass --num-classes between 2 and {MAX_CLASSES}",
        )
    table = _pair_table()
    if variant == "b":
        table = table[::-1]
    return table[:num_classes]


def synthetic_labels(num_classes: int, variant: str = "a") -> list[str]:
    """Human-readable class names such as ``disk-plain`` or ``cross-checker``."""
    return [f"{SHAPES[s]}-{TEXTURES[t]}" for s, t in synthetic_classes(num_classes, variant)]


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    name = SHAPES[shape]
    if name == "disk":
        return u * u + v * v < 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8
    if name == "triangle":  # apex up, base down (image y grows downwards)
        return (v < 0.75) & (np.abs(u) < (v + 0.95) * 0.6)
    if name == "cross":
        return ((np.abs(u) < 0.33) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.33) & (np.abs(u) < 0.95))
    if name == "ring":
        d2 = u * u + v * v
        return (d2 < 1.0) & (d2 > 0.5 * 0.5)
    return np.abs(u) + np.abs(v) < 1.05  # diamond


def _texture(texture: int, u: np.ndarray, v: np.ndarray, period: float, phase: tuple[float, float]) -> np.ndarray:
    name = TEXTURES[texture]
    if name == "plain":
        return np.ones_like(u, dtype=bool)
    a = np.sin(2 * np.pi * u / period + phase[0]) > 0
    b = np.sin(2 * np.pi * v / period + phase[1]) > 0
    if name == "hstripes":
        return b
    if name == "vstripes":
        return a
    return a ^ b  # checker


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def render_image(rng: np.random.Generator, shape: int, texture: int, size: int) -> np.ndarray:
    """One ``size``×``size``×3 uint8 image of ``shape`` filled with ``texture``.

    Nuisance factors (position, scale, tilt, stripe period and phase, colours,
    background gradient, pixel noise) are drawn from ``rng``.
    """
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    cx, cy = rng.uniform(-0.22, 0.22, size=2)
    radius = rng.uniform(0.5, 0.72)
    tilt = rng.uniform(-0.25, 0.25)
    cos, sin = np.cos(tilt), np.sin(tilt)
    dx, dy = (x - cx) / radius, (y - cy) / radius
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = _shape_mask(shape, u, v)
    period = rng.uniform(0.42, 0.55)
    pattern = _texture(texture, u, v, period, tuple(rng.uniform(0, 2 * np.pi, size=2)))

    hue = rng.uniform()
    fg = _hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.75, 1.0))
    fg_dark = fg * rng.uniform(0.15, 0.35)
    bg = _hsv(hue + rng.uniform(0.25, 0.75), rng.uniform(0.0, 0.5), rng.uniform(0.15, 0.45))
    gradient = rng.uniform(-0.12, 0.12, size=2).astype(np.float32)
    image = bg[None, None, :] + (gradient[0] * x + gradient[1] * y)[..., None]
    fill = np.where(pattern[..., None], fg[None, None, :], fg_dark[None, None, :])
    image = np.where(mask[..., None], fill, image)
    image = image + rng.normal(0.0, 0.05, size=image.shape).astype(np.float32)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class SyntheticDataset:
    """``size`` images of ``num_classes`` balanced classes (label = index mod N).

    ``transform`` turns a PIL image into the model's input, exactly as for image
    files, so the synthetic data goes through the same preprocessing the served
    model uses.
    """

    def __init__(
        self,
        num_classes: int,
        size: int,
        image_size: int,
        seed: int = 0,
        variant: str = "a",
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.pairs = synthetic_classes(num_classes, variant)
        self.classes = synthetic_labels(num_classes, variant)
        self.num_classes = num_classes
        self.size = int(size)
        self.image_size = int(image_size)
        self.transform = transform
        self._key = (int(seed), _VARIANTS[variant], _SPLITS[split])
        self.targets = [i % num_classes for i in range(self.size)]
        self._cache: np.ndarray | None = None
        if self.size * self.image_size * self.image_size * 3 <= _CACHE_BYTES:
            self._cache = np.stack([self._render(i) for i in range(self.size)]) if self.size else None

    def _render(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([*self._key, index])
        shape, texture = self.pairs[self.targets[index]]
        return render_image(rng, shape, texture, self.image_size)

    def array(self, index: int) -> np.ndarray:
        """The HWC uint8 pixels of image ``index``."""
        return self._cache[index] if self._cache is not None else self._render(index)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        image: Any = Image.fromarray(self.array(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def make_synthetic_images(
    out_dir: str | Path,
    count: int,
    num_classes: int,
    image_size: int,
    seed: int = 0,
    variant: str = "a",
) -> list[Path]:
    """Write ``count`` synthetic images as PNG files, ``out_dir/<label>/<index>.png``.

    The layout is an ImageFolder, and the parent directory of each file is its true
    label, so a client can classify the files and check the answers. They come from
    their own split, distinct from the training and validation images of ``seed``.
    """
    from PIL import Image

    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"count must be a positive integer, got {count!r}", hint="ask for at least one image")
    dataset = SyntheticDataset(num_classes, count, image_size, seed=seed, variant=variant, split="images")
    out = Path(out_dir)
    paths = []
    for index in range(count):
        label = dataset.classes[dataset.targets[index]]
        path = out / label / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(dataset.array(index)).save(path)
        paths.append(path)
    return paths
