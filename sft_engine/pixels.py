"""The one pixel pipeline: image bytes or pixels → the engine's input tensor.

This file is imported by ``sft_engine.preprocess`` (so the build's parity data, the
fine-tuning data and every client-side ``classify`` use it) and is copied unchanged,
byte for byte, as ``model.py`` of the ``<name>_preprocess`` model that Triton runs in
front of the engine (the ``<name>_image`` ensemble). One implementation on both sides
is the point: decode or resize differences between training and serving cost accuracy
silently. It therefore imports only numpy and Pillow, never sft-engine, so the same
repository loads in the stock NGC Triton container.

Steps, in order: decode (PNG, JPEG or WebP; the size is checked against
``max_image_pixels`` from the header, before any pixel is decoded); convert to RGB;
resize to ``input_size``×``input_size`` (Pillow bilinear, antialiased; no crop);
multiply by ``scale``; subtract ``mean`` and divide by ``std`` per channel; lay out
CHW float32. The parameters are the ``preprocess_*`` entries the build records in
the engine's ``config.pbtxt``; the preprocessing model carries the same entries.

Decoder: Pillow. simplejpeg decodes JPEG to the same pixels but was not clearly
faster here, where resizing, not decoding, dominates (benchmarks/bench_decoders.py,
docs/performance.md).
"""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
FORMATS = ("PNG", "JPEG", "WEBP")
PARAMETER_PREFIX = "preprocess_"


class ImageError(ValueError):
    """Bytes that are not a usable image; the message is one line naming the problem."""


class PixelPipeline:
    """Turns decoded images (or their encoded bytes) into normalized CHW float32 arrays."""

    def __init__(self, input_size, mean, std, scale=1.0 / 255.0, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        self.input_size = int(input_size)
        self.scale = np.float32(scale)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.max_image_pixels = int(max_image_pixels)

    @classmethod
    def from_parameters(cls, params):
        """From ``preprocess_*`` strings (a config's ``parameters``)."""
        def get(key, default=None):
            value = params.get(PARAMETER_PREFIX + key, default)
            if value is None:
                raise KeyError("model config has no parameter " + PARAMETER_PREFIX + key)
            return str(value)

        for key, supported in (("layout", "NCHW"), ("color", "RGB"), ("resize", "bilinear")):
            if get(key, supported) != supported:
                raise ValueError("unsupported preprocessing %s %r (this pipeline does %s)" % (key, get(key), supported))
        return cls(
            input_size=int(get("input_size")),
            mean=[float(v) for v in get("mean").split(",")],
            std=[float(v) for v in get("std").split(",")],
            scale=float(get("scale")),
            max_image_pixels=int(get("max_image_pixels", str(DEFAULT_MAX_IMAGE_PIXELS))),
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
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError("the %s image is truncated or corrupt (%s)" % (image.format, _first_line(exc))) from None
        return image

    # -- image → tensor ----------------------------------------------------------------
    def image_to_array(self, image):
        """A PIL image → CHW float32, exactly the build's preprocessing."""
        from PIL import Image

        image = image.convert("RGB")
        if image.size != (self.input_size, self.input_size):
            image = image.resize((self.input_size, self.input_size), Image.BILINEAR)
        arr = np.asarray(image, dtype=np.float32) * self.scale
        arr = (arr - self.mean) / self.std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

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
