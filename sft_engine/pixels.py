"""The one pixel pipeline: image bytes or pixels → the engine's input tensor.

This file is imported by ``sft_engine.preprocess`` (so the build's parity data, the
fine-tuning data and every client-side ``classify`` use it) and is copied unchanged,
byte for byte, as ``model.py`` of the ``<name>_preprocess`` model that Triton runs in
front of a native engine (the ``<name>_image`` ensemble), and as ``pixels.py`` beside
the fused ``<name>_image`` of a CPU engine, which loads it by path. One implementation on both sides
is the point: decode or resize differences between training and serving cost accuracy
silently. It therefore imports only numpy and Pillow, never sft-engine, so the same
repository loads in the stock NGC Triton container.

Steps, in order: decode (PNG, JPEG or WebP; the size is checked against
``max_image_pixels`` from the header, before any pixel is decoded); convert to RGB;
resize and crop to ``input_size``×``input_size`` by ``crop_mode`` (below); scale to
[0, 1] (divide by 255, as torchvision's ``to_tensor`` / ``convert_image_dtype`` do);
subtract ``mean`` and divide by ``std`` per channel; lay out CHW float32 (the last three
through a 256-entry table per channel computed by the same float32 operations, so
bit-identical to applying them per pixel). The
parameters are the ``preprocess_*`` entries the build records in the engine's
``config.pbtxt``; the preprocessing model carries the same entries.

Resize and crop follow timm's ``transforms_imagenet_eval`` and torchvision's
``ImageClassification`` on PIL images to the pixel (same integer arithmetic, same
Python rounding, Pillow's antialiased filters, which is what both use on PIL images).
``R`` is ``resize_size`` (timm: ``floor(input_size / crop_pct)``; absent: ``input_size``):

* ``squash`` - resize to R×R (aspect ratio not kept), centre-crop ``input_size``; with
  R = ``input_size`` this is the plain resize every build before crop modes recorded;
* ``center`` - resize the shorter edge to R, the longer to ``int(R * long / short)``
  (torchvision ``Resize(int)``), centre-crop ``input_size`` at
  ``int(round((edge - input_size) / 2))``;
* ``border`` - resize the longer edge to R (each edge ``round(edge * R / longest)``,
  timm ``ResizeKeepRatio(longest=1)``), centre-crop or pad to ``input_size`` with the
  colour ``round(255 * mean)`` (timm ``CenterCropOrPad``).

Decoder: Pillow. simplejpeg decodes JPEG to the same pixels but was not clearly
faster here, where resizing, not decoding, dominates (benchmarks/bench_decoders.py,
docs/performance.md).

``fast_decode`` (off unless a build enabled it and its gate passed; never for the
client-side reference): a JPEG at least twice the resize target in both edges is
decoded at a reduced DCT scale (``Image.draft``: 1/2, 1/4 or 1/8, never below the
target), then resized as usual. The pixels differ slightly from the exact decode, so
the build measures label agreement on its gate images before it may be served.
"""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
FORMATS = ("PNG", "JPEG", "WEBP")
PARAMETER_PREFIX = "preprocess_"
CROP_MODES = ("squash", "center", "border")
#: Pillow's filters, by timm's / torchvision's names (Pillow antialiases all but nearest)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


class ImageError(ValueError):
    """Bytes that are not a usable image; the message is one line naming the problem."""


class PixelPipeline:
    """Turns decoded images (or their encoded bytes) into normalized CHW float32 arrays."""

    def __init__(self, input_size, mean, std, scale=1.0 / 255.0, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                 resize_size=None, crop_mode="squash", interpolation="bilinear", fast_decode=False):
        if crop_mode not in CROP_MODES:
            raise ValueError("unsupported preprocessing crop_mode %r (this pipeline does %s)" % (crop_mode, ", ".join(CROP_MODES)))
        if interpolation not in INTERPOLATIONS:
            raise ValueError("unsupported preprocessing resize %r (this pipeline does %s)" % (interpolation, ", ".join(INTERPOLATIONS)))
        self.input_size = int(input_size)
        self.resize_size = int(resize_size) if resize_size else self.input_size
        self.crop_mode = crop_mode
        self.interpolation = interpolation
        self.scale = np.float32(scale)
        # 1/255 is applied as a division by 255, as torchvision and timm do: bit-identical tensors
        inverse = 1.0 / float(scale)
        self._divisor = np.float32(round(inverse)) if abs(inverse - round(inverse)) < 1e-6 else None
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self._fill = tuple(int(round(255 * float(v))) for v in mean)
        # every uint8 value of every channel, normalized by the very float32 operations applied per pixel
        # (scale, subtract mean, divide by std): a lookup is bit-identical and several times faster
        levels = np.arange(256, dtype=np.float32)
        levels = levels / self._divisor if self._divisor is not None else levels * self.scale
        self._lut = (levels[None, :] - self.mean[:, None]) / self.std[:, None]
        self.max_image_pixels = int(max_image_pixels)
        self.fast_decode = bool(fast_decode)

    @classmethod
    def from_parameters(cls, params):
        """From ``preprocess_*`` strings (a config's ``parameters``)."""
        def get(key, default=None):
            value = params.get(PARAMETER_PREFIX + key, default)
            if value is None:
                raise KeyError("model config has no parameter " + PARAMETER_PREFIX + key)
            return str(value)

        for key, supported in (("layout", "NCHW"), ("color", "RGB"), ("antialias", "true")):
            if get(key, supported) != supported:
                raise ValueError("unsupported preprocessing %s %r (this pipeline does %s)" % (key, get(key), supported))
        return cls(
            input_size=int(get("input_size")),
            mean=[float(v) for v in get("mean").split(",")],
            std=[float(v) for v in get("std").split(",")],
            scale=float(get("scale")),
            max_image_pixels=int(get("max_image_pixels", str(DEFAULT_MAX_IMAGE_PIXELS))),
            resize_size=int(get("resize_size", "0")) or None,  # absent: the plain resize of older builds
            crop_mode=get("crop_mode", "squash"),
            interpolation=get("resize", "bilinear"),
            # not a preprocess_ entry: the engine's recorded preprocessing stays exact for every client
            fast_decode=str(params.get("fast_decode", "false")).lower() == "true",
        )

    # -- bytes → image -----------------------------------------------------------------
    def decode(self, data):
        """Encoded bytes → a loaded PIL image; ImageError (one line) for anything unusable."""
        from PIL import Image, UnidentifiedImageError

        if not data:
            raise ImageError("the image is empty (0 bytes): send the file's contents")
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise ImageError("the %d bytes are not a PNG, JPEG or WebP image" % len(data)) from None
        except Image.DecompressionBombError:
            raise ImageError("the image is too large to decode safely (limit %d pixels)" % self.max_image_pixels) from None
        except (OSError, ValueError, SyntaxError) as exc:  # a header cut short
            raise ImageError("the image is truncated or corrupt (%s)" % _first_line(exc)) from None
        width, height = image.size
        if width * height > self.max_image_pixels:
            raise ImageError("the image is %dx%d = %d pixels, over the limit of %d pixels: send a smaller image"
                             % (width, height, width * height, self.max_image_pixels))
        if self.fast_decode:
            self.draft(image)
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError("the %s image is truncated or corrupt (%s)" % (image.format, _first_line(exc))) from None
        return image

    def draft(self, image):
        """Ask a JPEG decoder for a reduced DCT scale where the source is at least twice the target; True if it did."""
        if image.format != "JPEG":
            return False
        width, height = image.size
        target = self.resized_size(width, height)
        if width < 2 * target[0] or height < 2 * target[1]:
            return False
        return image.draft(image.mode, target) is not None

    # -- image → tensor ----------------------------------------------------------------
    def image_to_array(self, image):
        """A PIL image → CHW float32, exactly the build's preprocessing."""
        from PIL import Image

        image = self.resize_and_crop(image if image.mode == "RGB" else image.convert("RGB"))
        planes = np.asarray(image).transpose(2, 0, 1)
        out = np.empty(planes.shape, np.float32)
        for channel in range(3):
            np.take(self._lut[channel], planes[channel], out=out[channel])
        return out

    def resized_size(self, width, height):
        """(width, height) after the resize step, before the crop (the arithmetic of timm / torchvision)."""
        size = self.resize_size
        if self.crop_mode == "squash":
            return size, size
        if self.crop_mode == "center":  # torchvision F.resize(img, [size]): the shorter edge to size, the longer truncated
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = size, int(size * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        ratio = max(height / size, width / size)  # timm ResizeKeepRatio(longest=1.0)
        return round(width / ratio), round(height / ratio)

    def resize_and_crop(self, image):
        """An RGB PIL image → ``input_size``×``input_size`` RGB PIL image, by ``crop_mode``."""
        from PIL import Image

        target = self.resized_size(*image.size)
        if image.size != target:
            image = image.resize(target, _pil_filter(Image, self.interpolation))
        return _center_crop_or_pad(image, self.input_size, self._fill if self.crop_mode == "border" else (0, 0, 0))

    def bytes_to_array(self, data):
        return self.image_to_array(self.decode(data))

    def _outcome(self, data):
        try:
            return self.bytes_to_array(data)
        except ImageError as exc:
            return exc

    def arrays_from_bytes(self, items, executor=None):
        """Many encoded images → a list of CHW arrays or ``ImageError`` (one bad image spoils nothing else).

        With an ``executor`` the images are decoded on its threads: Pillow releases the
        GIL while it decodes and resizes.
        """
        if executor is None or len(items) < 2:
            return [self._outcome(data) for data in items]
        return list(executor.map(self._outcome, items))


def _pil_filter(image_module, name):
    return getattr(image_module.Resampling, name.upper())


def _center_crop_or_pad(image, size, fill):
    """torchvision ``center_crop`` / timm ``center_crop_or_pad`` on a PIL image: pad with ``fill`` where smaller, then crop."""
    from PIL import Image

    width, height = image.size
    if size > width or size > height:
        left = (size - width) // 2 if size > width else 0
        top = (size - height) // 2 if size > height else 0
        right = (size - width + 1) // 2 if size > width else 0
        bottom = (size - height + 1) // 2 if size > height else 0
        padded = Image.new(image.mode, (width + left + right, height + top + bottom), fill)
        padded.paste(image, (left, top))
        image = padded
        width, height = image.size
        if width == size and height == size:
            return image
    if width == size and height == size:
        return image
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _request_images(array):
    """A BYTES input as numpy (object array of shape [batch, 1]) → one bytes object per image."""
    return [bytes(item) for item in array.reshape(-1)]


class TritonPythonModel:
    """The ``<name>_preprocess`` model: ``IMAGE`` (BYTES [1]) → ``PIXELS`` (the engine's input).

    All requests the dynamic batcher hands over are decoded in this one call; a
    request with a bad image gets its own error response, the others their tensors.
    """

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self._pipeline = PixelPipeline.from_parameters(params)
        self._input_name = config["input"][0]["name"]
        output = config["output"][0]
        self._output_name = output["name"]
        self._dtype = pb_utils.triton_string_to_numpy(output["data_type"])
        # INVALID_ARG (HTTP 400) says "the request is wrong, do not retry"; older backends lack codes
        self._invalid = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        threads = int(params.get("decode_threads", "1") or 1)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None

    def execute(self, requests):
        pb = self._pb
        per_request = []
        for request in requests:
            tensor = pb.get_input_tensor_by_name(request, self._input_name)
            per_request.append(_request_images(tensor.as_numpy()) if tensor is not None else [])
        flat = [data for images in per_request for data in images]
        outcomes = self._pipeline.arrays_from_bytes(flat, self._executor)
        responses, start = [], 0
        for images in per_request:
            mine = outcomes[start:start + len(images)]
            start += len(images)
            bad = next(((i, out) for i, out in enumerate(mine) if isinstance(out, ImageError)), None)
            if not mine:
                responses.append(pb.InferenceResponse(output_tensors=[], error=self._error("the request has no %s input" % self._input_name)))
            elif bad is not None:
                where = "" if len(mine) == 1 else "image %d of %d: " % (bad[0], len(mine))
                responses.append(pb.InferenceResponse(output_tensors=[], error=self._error(where + str(bad[1]))))
            else:
                batch = np.stack(mine).astype(self._dtype, copy=False)
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(self._output_name, batch)]))
        return responses

    def _error(self, message):
        if self._invalid is None:
            return self._pb.TritonError(message)
        return self._pb.TritonError(message, self._invalid)

    def finalize(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False)
