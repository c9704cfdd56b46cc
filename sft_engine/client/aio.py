"""``AsyncClient``: the asyncio twin of ``Client``, over tritonclient.grpc.aio / tritonclient.http.aio.

Same settings, same checks, same results and errors as ``Client``; every call that
talks to the server is a coroutine. Image decoding and preprocessing run in the
loop's default executor so they never block the event loop, a window at a time like
``Client`` does, and the chunks of a window are sent concurrently; results keep the
input order.
Metadata is read lazily: ``await client.get_model_info()`` (or any call that needs it)
reads it once; afterwards the ``model_info`` / ``model_config`` / ``labels``
properties return the cached values.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import numpy as np

from sft_engine.client.errors import BadInput, ClientError, ModelNotFound, ModelNotReady, RequestTimeout, ServerUnavailable, refine_not_found
from sft_engine.client.inputs import check_batch, chunks, image_chunks, plan_classify, preprocess_chunk, window_for
from sft_engine.client.metrics import resolve_metrics
from sft_engine.client.model_info import ModelInfo, labels_from_classification
from sft_engine.client.predictions import Prediction, top_k as rank
from sft_engine.client.retry import RetryPolicy, acall_with_retry
from sft_engine.client.server_side import check_image_model, encode_images, image_model, missing_image_model, pinned_version, send_files_async
from sft_engine.client.settings import ClientSettings, SettingsView
from sft_engine.client.shm import ShmPool, ShmSlot, in_use, release_patience_s
from sft_engine.client.transport import make_async_transport
from sft_engine.client.wire import InferTarget

__all__ = ["AsyncClient"]

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncClient(SettingsView):
    """A classifier served by Triton, for asyncio code. Use with ``async with``.

    >>> async with AsyncClient("127.0.0.1:8001", model="resnet18") as client:
    ...     results = await client.classify(["cat.jpg"], top_k=3)

    Arguments as for ``Client``. One AsyncClient belongs to one event loop.
    """

    def __init__(self, url: str = "127.0.0.1:8001", *, protocol: str = "grpc", model: str, version: int | str | None = None,
                 timeout: float = 30.0, retries: int | RetryPolicy | None = 2, shared_memory: bool = False, metrics: Any = None,
                 concurrency: int = 4, labels: Sequence[str] | None = None) -> None:
        self.settings = ClientSettings.create(url, protocol=protocol, model=model, version=version, timeout=timeout, retries=retries,
                                              shared_memory=shared_memory, concurrency=concurrency, labels=labels)
        self._metrics = resolve_metrics(metrics)
        self._transport = make_async_transport(self.settings.url, self.settings.protocol, self.settings.timeout_s)
        self._lock = asyncio.Lock()
        self._info: ModelInfo | None = None
        self._image_info: ModelInfo | None = None
        self._target: InferTarget | None = None
        self._labels: list[str] | None = list(self.settings.labels) if self.settings.labels is not None else None
        self._shm: ShmPool | None = None
        self._slots: "asyncio.Queue[ShmSlot] | None" = None
        self._closed = False

    # -- health ---------------------------------------------------------------------------
    async def is_live(self) -> bool:
        self._check_open()
        try:
            return await self._transport.is_live()
        except (ServerUnavailable, RequestTimeout):
            return False

    async def is_ready(self) -> bool:
        self._check_open()
        try:
            return await self._transport.is_ready() and await self._transport.is_model_ready(self.model, self.settings.version)
        except (ServerUnavailable, RequestTimeout):
            return False

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Wait until ``is_ready()``; raises ServerUnavailable or ModelNotReady/ModelNotFound after ``timeout`` s."""
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reached = False
        last: ClientError | None = None
        while True:
            try:
                if await self._transport.is_ready() and await self._transport.is_model_ready(self.model, self.settings.version):
                    return
                reached = True
            except (ServerUnavailable, RequestTimeout) as exc:
                last = exc
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(interval, remaining))
        if not reached:
            raise ServerUnavailable(f"the {self.protocol} server at {self.url} did not answer within {timeout:g} s",
                                    hint="start the server (sft-engine serve), or check the URL and protocol") from last
        what = f"model {self.model!r}" + (f" version {self.version}" if self.version else "")
        err: ClientError = ModelNotFound(f"{what} did not become ready within {timeout:g} s")
        try:
            index = await self._transport.repository_index()
        except ClientError:
            index = None
        refined = refine_not_found(err, index, self.model, self.settings.version)
        raise ModelNotReady(err.message, hint="check the server log; load the model or raise the timeout") if refined is err else refined

    # -- model --------------------------------------------------------------------------------
    async def get_model_info(self) -> ModelInfo:
        """The model's interface, read from the server once."""
        if self._info is None:
            async with self._lock:
                if self._info is None:
                    info = await self._load_info()
                    self._target = info.target()
                    self._info = info
        return self._info

    async def get_model_config(self) -> dict[str, Any]:
        return dict((await self.get_model_info()).config)

    async def get_labels(self) -> list[str]:
        """Class labels by index, read once through Triton's classification extension."""
        if self._labels is None:
            info = await self.get_model_info()
            async with self._lock:
                if self._labels is None:
                    self._labels = await self._load_labels(info)
        return list(self._labels)

    @property
    def model_info(self) -> ModelInfo:
        """The cached model interface; ``await get_model_info()`` (or any inference) reads it first."""
        if self._info is None:
            raise ClientError(f"the configuration of model {self.model!r} has not been read yet", hint="await client.get_model_info() first")
        return self._info

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self.model_info.config)

    @property
    def labels(self) -> list[str]:
        if self._labels is None:
            raise ClientError(f"the labels of model {self.model!r} have not been read yet", hint="await client.get_labels() first")
        return list(self._labels)

    async def _load_info(self) -> ModelInfo:
        self._check_open()
        model, version = self.model, self.settings.version

        async def fetch() -> ModelInfo:
            config = await self._transport.model_config(model, version)
            metadata = await self._transport.model_metadata(model, "")
            return ModelInfo.from_config(config, version=version, versions=metadata.get("versions", []))

        try:
            return await self._retrying(fetch, "model_config")
        except ModelNotFound as exc:
            raise (await self._refined(exc)) from exc

    async def _load_labels(self, info: ModelInfo) -> list[str]:
        n = info.num_classes
        if not info.has_labels or n < 1:
            return [str(i) for i in range(max(n, 0))]
        probe, target = info.probe_input(), self._target
        assert target is not None
        out = await self._retrying(lambda: self._transport.infer(target, probe, class_count=n), "labels")
        return labels_from_classification(np.asarray(out).reshape(-1).tolist(), n)

    async def _refined(self, exc: ModelNotFound) -> ClientError:
        try:
            index = await self._transport.repository_index()
        except ClientError:
            return exc
        return refine_not_found(exc, index, self.model, self.settings.version)

    # -- inference ------------------------------------------------------------------------------
    async def infer(self, batch: Any, *, split: bool = True) -> np.ndarray:
        """Raw model outputs for an input batch; see ``Client.infer``."""
        self._check_open()
        info = await self.get_model_info()
        array = check_batch(batch, info, split=split)
        if len(array) <= info.chunk_size:
            return await self._send(array)
        parts = chunks(array, info.chunk_size)
        return np.concatenate(await self._run(None, parts, window=len(parts)))  # already in memory: one window

    async def classify(self, images: Any, top_k: int = 5, *, server_side: bool = False) -> list[list[Prediction]]:
        """The ``top_k`` most likely classes per image; see ``Client.classify`` (also for ``server_side``)."""
        self._check_open()
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise BadInput(f"top_k must be an integer >= 1, given {top_k!r}", hint="e.g. --top-k 5 (top_k=5 in Python)", expected=">= 1", given=top_k)
        started = time.perf_counter()
        if server_side:
            blobs = await asyncio.get_running_loop().run_in_executor(None, encode_images, images)
            logits = await send_files_async(self._transport, await self._image_model_info(), blobs, self._retrying)
        else:
            info = await self.get_model_info()
            plan = plan_classify(images, info)
            if plan.ready is not None:
                logits = await self.infer(plan.ready)
            else:
                def prepare(chunk: Sequence[Any]) -> np.ndarray:
                    return preprocess_chunk(chunk, info)

                parts = list(image_chunks(plan.images, info.chunk_size))
                logits = np.concatenate(await self._run(prepare, parts, window=window_for(info, len(parts), self.settings.concurrency)))
        results = rank(logits, int(top_k), await self.get_labels())
        if self._metrics is not None:
            self._metrics.observe(self.model, self.protocol, "classify", time.perf_counter() - started)
        return results

    async def _image_model_info(self) -> ModelInfo:
        """``<model>_image``'s interface, read once (the server-side classify path)."""
        if self._image_info is None:
            self._check_open()
            pinned_version(self.model, self.settings.version)
            name = image_model(self.model)

            async def fetch() -> ModelInfo:
                return ModelInfo.from_config(await self._transport.model_config(name, ""))

            try:
                info = await self._retrying(fetch, "model_config")
            except ModelNotFound as exc:
                raise missing_image_model(exc, self.model) from exc
            self._image_info = check_image_model(info)
        return self._image_info

    async def _run(self, prepare: Callable[[Any], np.ndarray] | None, items: Sequence[Any], window: int) -> list[np.ndarray]:
        """Prepare a window of items (in the loop's executor), send all its chunks at once; results in order.

        The same scheme as ``Client._run``: the next window is prepared while the
        previous one is in flight, and at most two windows are held.
        """
        loop = asyncio.get_running_loop()

        async def prepared(batch: Sequence[Any]) -> list[np.ndarray]:
            if prepare is None:
                return list(batch)
            return await loop.run_in_executor(None, lambda: [prepare(item) for item in batch])

        if len(items) == 1:
            return [await self._send((await prepared(items))[0])]
        pending: collections.deque[asyncio.Future[np.ndarray]] = collections.deque()
        results: list[np.ndarray] = []
        try:
            for start in range(0, len(items), window):
                while len(pending) > window:
                    results.append(await pending.popleft())
                arrays = await prepared(items[start:start + window])
                pending.extend(asyncio.ensure_future(self._send(array)) for array in arrays)
            while pending:
                results.append(await pending.popleft())
            return results
        except BaseException:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise

    async def _send(self, array: np.ndarray) -> np.ndarray:
        info, target = self._info, self._target
        assert info is not None and target is not None
        unbatched = not info.batching
        payload = array[0] if unbatched else array
        started = time.perf_counter()
        try:
            if not self.settings.shared_memory:
                out = await self._retrying(lambda: self._transport.infer(target, payload), "infer")
            else:
                out = await self._retrying(lambda: self._infer_shm(target, payload), "infer")
        except ModelNotFound as exc:
            err = await self._refined(exc)
            self._failed(err)
            raise err from exc
        except ClientError as exc:
            self._failed(exc)
            raise
        if self._metrics is not None:
            self._metrics.observe(self.model, self.protocol, "infer", time.perf_counter() - started)
        return out[None] if unbatched else out

    async def _infer_shm(self, target: InferTarget, payload: np.ndarray) -> np.ndarray:
        slots = await self._shm_slots()
        slot = await slots.get()
        try:
            return await self._transport.infer(target, payload, slot=slot)
        except RequestTimeout:
            slot = await self._replacement(slot)
            raise
        finally:
            slots.put_nowait(slot)

    async def _retrying(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        return await acall_with_retry(fn, self.settings.retry, idempotent=True, what=f"{self.model} {what}")

    def _failed(self, exc: ClientError) -> None:
        if self._metrics is not None:
            self._metrics.failed(self.model, self.protocol, "infer", exc)

    # -- shared memory ------------------------------------------------------------------------------
    async def _shm_slots(self) -> "asyncio.Queue[ShmSlot]":
        if self._slots is None:
            async with self._lock:
                if self._slots is None:
                    info = self.model_info
                    in_bytes, out_bytes = info.shm_sizes()
                    self._shm = ShmPool(0, in_bytes, out_bytes)
                    slots: asyncio.Queue[ShmSlot] = asyncio.Queue()
                    for _ in range(self.settings.concurrency):
                        slots.put_nowait(await self._register(self._shm.add_slot()))
                    self._slots = slots
        return self._slots

    async def _register(self, slot: ShmSlot) -> ShmSlot:
        for name, key, size in slot.registrations():
            await self._transport.register_shm(name, key, size)
        return slot

    async def _replacement(self, slot: ShmSlot) -> ShmSlot:
        assert self._shm is not None
        try:
            return await self._register(self._shm.add_slot())
        except ClientError as exc:
            LOGGER.warning("cannot replace a timed-out shared memory slot (%s); reusing it", exc)
            return slot

    def shared_memory_regions(self) -> list[str]:
        return self._shm.names if self._shm is not None else []

    # -- lifecycle ------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClientError(f"the client for model {self.model!r} is closed", hint="create a new AsyncClient")

    async def close(self) -> None:
        """Unregister and remove shared memory, close connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        pool, self._shm, self._slots = self._shm, None, None
        try:
            if pool is not None:
                await self._unregister(pool.names)
        finally:
            if pool is not None:
                pool.destroy()
            await self._transport.close()

    async def _unregister(self, names: list[str]) -> None:
        """Unregister regions; retry those a timed-out request still uses, for a bounded time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + release_patience_s(self.settings.timeout_s)
        delay = 0.02
        while names:
            busy = []
            for name in names:
                try:
                    await self._transport.unregister_shm(name)
                except ClientError as exc:
                    if in_use(exc) and loop.time() < deadline:
                        busy.append(name)
                    else:
                        LOGGER.warning("cannot unregister shared memory region %s: %s", name, exc.message)
            names = busy
            if names:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
