"""An in-memory Triton for the client's unit tests: the ``Transport`` seam, faked.

``FakeServer`` holds model configs in the JSON form the control plane answers and
computes each item's logits from its input (its first ``num_classes`` values), so a
test can tell which item came back where. ``fail`` scripts the errors the next calls
raise, in turn. ``FakeTransport`` / ``FakeAsyncTransport`` put it under ``Client`` /
``AsyncClient`` and count every call.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any

import numpy as np

from sft_engine.client import AsyncTransport, RetryPolicy, Transport
from sft_engine.client.errors import ClientError, ModelNotFound, ServerUnavailable
from sft_engine.preprocess import Preprocessing

LABELS = ["cat", "dog", "fox"]
SIZE = 8  # input images are 3×8×8
#: three attempts without waiting between them
FAST = RetryPolicy(attempts=3, initial_backoff_s=0.0, max_backoff_s=0.0)


def batch(n: int) -> np.ndarray:
    """``n`` distinct items (each item's values differ from every other's)."""
    return np.arange(n * 3 * SIZE * SIZE, dtype=np.float32).reshape(n, 3, SIZE, SIZE)


def toy_config(name: str = "toy", max_batch_size: int = 4) -> dict[str, Any]:
    params = {k: {"string_value": v} for k, v in Preprocessing(input_size=SIZE).to_parameters().items()}
    return {
        "name": name, "backend": "python", "max_batch_size": max_batch_size,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, SIZE, SIZE]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [len(LABELS)], "label_filename": "labels.txt"}],
        "parameters": params,
    }


def logits_of(batch: np.ndarray) -> np.ndarray:
    """What the fake model answers for a batched input: each item's first values."""
    return batch.reshape(len(batch), -1)[:, :len(LABELS)].astype(np.float32)


class FakeServer:
    def __init__(self, *configs: dict[str, Any], unloaded: tuple[str, ...] = ()) -> None:
        self.configs = {c["name"]: c for c in (configs or (toy_config(),))}
        self.unloaded = set(unloaded)  # in the repository, not loaded
        self.up = True
        self.calls: collections.Counter[str] = collections.Counter()
        self.batches: list[tuple[int, ...]] = []  # shape of every plain inference request
        self.failures: dict[str, list[ClientError]] = collections.defaultdict(list)
        self._lock = threading.Lock()

    def fail(self, call: str, *errors: ClientError) -> None:
        self.failures[call].extend(errors)

    def _enter(self, call: str, model: str | None = None) -> None:
        with self._lock:
            self.calls[call] += 1
            pending = self.failures[call]
            error = pending.pop(0) if pending else None
        if error is not None:
            raise error
        if not self.up:
            raise ServerUnavailable("nothing answers at fake:8001", hint="start the fake")
        if model is not None and (model not in self.configs or model in self.unloaded):
            raise ModelNotFound(f"model {model!r} is not found", status="404")

    def is_model_ready(self, model: str, version: str) -> bool:
        self._enter("is_model_ready")
        return model in self.configs and model not in self.unloaded

    def model_config(self, model: str) -> dict[str, Any]:
        self._enter("model_config", model)
        return dict(self.configs[model])

    def repository_index(self) -> list[dict[str, Any]]:
        self._enter("repository_index")
        return [{"name": n, "version": "1", "state": "UNAVAILABLE" if n in self.unloaded else "READY"} for n in sorted(self.configs)]

    def infer(self, model: str, array: np.ndarray, class_count: int) -> np.ndarray:
        self._enter("infer", model)
        batched = self.configs[model]["max_batch_size"] > 0
        batch = array if batched else array[None]
        if class_count:  # Triton's classification extension: "score:index:label", best first
            rows = [[f"{row[i]:.3f}:{i}:{LABELS[i]}".encode() for i in np.argsort(-row)[:class_count]] for row in logits_of(batch)]
            out = np.array(rows, dtype=object)
        else:
            with self._lock:
                self.batches.append(array.shape)
            out = logits_of(batch)
        return out if batched else out[0]


class FakeTransport(Transport):
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.closed = 0

    def is_live(self) -> bool:
        self.server._enter("is_live")
        return True

    def is_ready(self) -> bool:
        self.server._enter("is_ready")
        return True

    def is_model_ready(self, model: str, version: str) -> bool:
        return self.server.is_model_ready(model, version)

    def model_config(self, model: str, version: str) -> dict[str, Any]:
        return self.server.model_config(model)

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        self.server._enter("model_metadata", model)
        return {"name": model, "versions": ["1"]}

    def repository_index(self) -> list[dict[str, Any]]:
        return self.server.repository_index()

    def infer(self, target: Any, array: np.ndarray, class_count: int = 0, slot: Any = None) -> np.ndarray:
        return self.server.infer(target.model, array, class_count)

    def close(self) -> None:
        self.closed += 1


class FakeAsyncTransport(AsyncTransport):
    """Each call yields to the loop once, as a real one does, so that concurrent calls interleave."""

    def __init__(self, server: FakeServer) -> None:
        self.sync = FakeTransport(server)
        self.closed = 0

    async def is_live(self) -> bool:
        await asyncio.sleep(0)
        return self.sync.is_live()

    async def is_ready(self) -> bool:
        await asyncio.sleep(0)
        return self.sync.is_ready()

    async def is_model_ready(self, model: str, version: str) -> bool:
        await asyncio.sleep(0)
        return self.sync.is_model_ready(model, version)

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        return self.sync.model_config(model, version)

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        return self.sync.model_metadata(model, version)

    async def repository_index(self) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        return self.sync.repository_index()

    async def infer(self, target: Any, array: np.ndarray, class_count: int = 0, slot: Any = None) -> np.ndarray:
        await asyncio.sleep(0)
        return self.sync.infer(target, array, class_count, slot)

    async def close(self) -> None:
        self.closed += 1
