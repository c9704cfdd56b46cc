"""Triton Python-backend model ``<name>_image`` of a CPU engine: image bytes → logits in one stub (copied as ``model.py``).

Why one model instead of the ensemble (``<name>_preprocess`` → ``<name>``): a CPU
engine is itself a Python-backend model, so the ensemble costs every request two stub
hops, a float tensor copied through shared memory out of the first stub and into the
second, and the ensemble scheduler between them. Once INT8 made the engines 5-18×
faster that overhead, not the engine, bounded raw-bytes throughput (docs/performance.md,
"Where the time of an image request goes"). Here the images of every request the
dynamic batcher hands over are decoded, preprocessed and run through the engine as one
batch, in one process; the tensor never leaves it.

Answers are those of the exact path: the version directory holds ``pixels.py``
(``sft_engine/pixels.py`` byte for byte, the client-side preprocessing) and
``serving_model.py`` (the engine's own ``model.py``), and this file loads both by path,
so it imports nothing of sft-engine and the same repository loads in the stock NGC
container with Pillow added. A request with a bad image gets its own one-line error;
the other requests of the batch their logits. ``fast_decode`` "true" (a build flag,
gated at build time) lets JPEGs decode at a reduced DCT scale (``PixelPipeline``'s
``fast_decode``).
"""

import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def load_sibling(version_dir, name):
    """The module ``<version_dir>/<name>.py``, loaded by path (never from sys.path: the version's own copy)."""
    path = os.path.join(version_dir, name + ".py")
    spec = importlib.util.spec_from_file_location("_sft_image_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_outcomes(per_request, outcomes, is_error):
    """Per request: ``(None, [arrays])`` when every image decoded, else ``(message, None)``.

    ``per_request`` counts the images of each request, ``outcomes`` the flat decode
    results in order (an array or an error).
    """
    out, start = [], 0
    for count in per_request:
        mine = outcomes[start:start + count]
        start += count
        bad = next(((i, o) for i, o in enumerate(mine) if is_error(o)), None)
        if not mine:
            out.append(("the request has no IMAGE input", None))
        elif bad is not None:
            where = "" if len(mine) == 1 else "image %d of %d: " % (bad[0], len(mine))
            out.append((where + str(bad[1]), None))
        else:
            out.append((None, mine))
    return out


class TritonPythonModel:
    """The ``<name>_image`` entry point: ``IMAGE`` (BYTES [1]) → the engine's labelled logits."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        pixels = load_sibling(version_dir, "pixels")
        engine = load_sibling(version_dir, "serving_model")
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self._pipeline = pixels.PixelPipeline.from_parameters(params)
        self._image_error = pixels.ImageError
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        self._runner = engine.EngineRunner(version_dir, instances=instances)
        if self._runner.warning:
            pb_utils.Logger.log_warn("%s version %s: %s" % (args["model_name"], args["model_version"], self._runner.warning))
        self._input_name = config["input"][0]["name"]
        self._output_name = config["output"][0]["name"]
        self._invalid = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        threads = int(params.get("decode_threads", "1") or 1)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None

    def execute(self, requests):
        pb = self._pb
        per_request = []
        for request in requests:
            tensor = pb.get_input_tensor_by_name(request, self._input_name)
            per_request.append([bytes(item) for item in tensor.as_numpy().reshape(-1)] if tensor is not None else [])
        flat = [data for images in per_request for data in images]
        outcomes = self._pipeline.arrays_from_bytes(flat, self._executor)
        judged = split_outcomes([len(images) for images in per_request], outcomes, lambda o: isinstance(o, self._image_error))
        good = [arrays for error, arrays in judged if error is None]
        logits = self._runner.run(np.stack([a for arrays in good for a in arrays])) if good else None
        responses, start = [], 0
        for error, arrays in judged:
            if error is not None:
                responses.append(pb.InferenceResponse(output_tensors=[], error=self._error(error)))
                continue
            out = np.ascontiguousarray(logits[start:start + len(arrays)])
            start += len(arrays)
            responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(self._output_name, out)]))
        return responses

    def _error(self, message):
        if self._invalid is None:
            return self._pb.TritonError(message)
        return self._pb.TritonError(message, self._invalid)

    def finalize(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._runner = None
