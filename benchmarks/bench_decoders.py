"""Which JPEG decoder the served preprocessing uses: Pillow against simplejpeg, measured.

The ``<name>_preprocess`` model turns each request's image bytes into the engine's
input with ``sft_engine.pixels``. A faster decoder is worth taking only if it decodes
to exactly the same pixels (anything else changes the model's input compared with the
build's parity data and with client-side preprocessing) and if it makes the whole
pipeline (decode + RGB + resize + normalize), not just the decode, clearly faster.

The script writes photo-like JPEGs (smooth gradients, edges and grain; 500×375,
quality 90, about 30-60 KB), then, in one run and interleaved in blocks so that load
from other processes hits both alike:

1. decode only: ``PIL.Image.open(...).load()`` against ``simplejpeg.decode_jpeg``;
2. the whole pipeline to a 224×224 (and a 32×32) tensor, with either decoder;
3. pixel identity: the two decoders' RGB arrays compared exactly, for every image;
4. one batch of ``--batch`` images through ``PixelPipeline.arrays_from_bytes`` on 1
   thread and on 2 threads (how the preprocessing model decodes a dynamic batch).

Usage::

    python benchmarks/bench_decoders.py              # about 30 s
    python benchmarks/bench_decoders.py --images 40 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sft_engine.pixels import PixelPipeline  # noqa: E402
from sft_engine.preprocess import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def photo_like_jpegs(count: int, width: int = 500, height: int = 375, quality: int = 90, seed: int = 0) -> list[bytes]:
    """JPEGs with the statistics of photographs rather than of noise (which compresses unlike any photo)."""
    return photo_like(count, width, height, "JPEG", quality, seed)


def photo_like(count: int, width: int, height: int, fmt: str = "JPEG", quality: int | None = 90, seed: int = 0) -> list[bytes]:
    """Photo-like files: smooth gradients, soft-edged shapes, blur and grain (``quality`` None: 85-95 per image)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = max(width, height) / 500.0  # the same scene at any resolution: features grow with the frame
    out = []
    for _ in range(count):
        base = np.stack([
            127 + 100 * np.sin(xx / (scale * rng.uniform(20, 90)) + rng.uniform(0, 6)) * np.cos(yy / (scale * rng.uniform(20, 90))),
            127 + 100 * np.cos((xx + yy) / (scale * rng.uniform(30, 120))),
            127 + 100 * np.sin(yy / (scale * rng.uniform(15, 80)) + rng.uniform(0, 6)),
        ], axis=-1)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = int(rng.uniform(0, width)), int(rng.uniform(0, height))
            box = [x0, y0, x0 + int(scale * rng.uniform(20, 200)), y0 + int(scale * rng.uniform(20, 150))]
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        image = image.filter(ImageFilter.GaussianBlur(1.2 * scale))
        grain = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
        image = Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        if fmt == "JPEG":
            image.save(buf, format="JPEG", quality=int(rng.integers(85, 96)) if quality is None else quality)
        else:
            image.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def pil_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def simplejpeg_decode(data: bytes) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def per_image_ms(fn: Callable[[bytes], object], images: list[bytes]) -> float:
    start = time.perf_counter()
    for data in images:
        fn(data)
    return (time.perf_counter() - start) * 1000.0 / len(images)


def interleaved(candidates: dict[str, Callable[[bytes], object]], images: list[bytes], rounds: int) -> dict[str, float]:
    """Median per-image ms of each candidate over ``rounds`` blocks, candidates alternating block by block."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn(images[0])  # warm up (imports, first allocation)
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name].append(per_image_ms(fn, images))
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        print("simplejpeg is not installed: pip install simplejpeg (benchmark only)", file=sys.stderr)
        return 2
    images = photo_like_jpegs(args.images)
    sizes = [len(b) for b in images]
    print(f"{len(images)} JPEGs 500x375 q90, {statistics.median(sizes) / 1024:.1f} KB median")

    identical = sum(np.array_equal(pil_decode(b), simplejpeg_decode(b)) for b in images)
    print(f"pixel-identical decodes: {identical}/{len(images)}")

    decode = interleaved({"pillow": pil_decode, "simplejpeg": simplejpeg_decode}, images, args.rounds)
    print(f"decode only      pillow {decode['pillow']:.2f} ms  simplejpeg {decode['simplejpeg']:.2f} ms  "
          f"ratio {decode['pillow'] / decode['simplejpeg']:.2f}x")

    from PIL import Image

    results: dict[str, object] = {"images": len(images), "median_bytes": statistics.median(sizes), "identical": identical, "decode_ms": decode}
    for size in (224, 32):
        pipe = PixelPipeline(size, IMAGENET_MEAN, IMAGENET_STD)
        full = interleaved({
            "pillow": pipe.bytes_to_array,
            "simplejpeg": lambda b, pipe=pipe: pipe.image_to_array(Image.fromarray(simplejpeg_decode(b))),
        }, images, args.rounds)
        results[f"pipeline_{size}_ms"] = full
        print(f"pipeline to {size:>3}  pillow {full['pillow']:.2f} ms  simplejpeg {full['simplejpeg']:.2f} ms  "
              f"ratio {full['pillow'] / full['simplejpeg']:.2f}x")

    pipe = PixelPipeline(224, IMAGENET_MEAN, IMAGENET_STD)
    batch = (images * (args.batch // len(images) + 1))[:args.batch]
    with ThreadPoolExecutor(2) as pool:
        def one_thread(_: bytes) -> object:
            return pipe.arrays_from_bytes(batch)

        def two_threads(_: bytes) -> object:
            return pipe.arrays_from_bytes(batch, pool)

        threads = interleaved({"1": one_thread, "2": two_threads}, [b""], args.rounds * 3)
    results["batch_ms"] = threads
    print(f"batch of {args.batch} to 224  1 thread {threads['1']:.1f} ms  2 threads {threads['2']:.1f} ms  "
          f"ratio {threads['1'] / threads['2']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
