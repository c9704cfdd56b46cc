"""``Client``: images in, labels out, over gRPC or HTTP, without touching tritonclient.

What the client does for the caller, and why:

* It reads the model's configuration once (lazily, on first need) and from it the
  input/output names, dims, ``max_batch_size`` and the preprocessing recorded at
  build time, so ``classify`` reproduces exactly the build's resize and normalization.
* It checks inputs before sending (``BadInput`` says expected vs given) and splits
  batches larger than ``max_batch_size`` into chunks sent concurrently, results in
  input order. ``classify`` prepares images a window at a time (about 64 MiB of
  input: all of a small job) and sends each window at once; the next window is
  prepared while the previous one is in flight (``_run`` says why).
* Scores are softmax probabilities computed on the client from the full logits
  (see ``predictions``); labels are read once through Triton's classification extension.
* Every failure is a ``ClientError``; transient ones of idempotent calls are retried.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from sft_engine.client.errors import (
    BadInput,
    ClientError,
    ModelNotFound,
    ModelNotReady,
    RequestTimeout,
    ServerUnavailable,
    refine_not_found,
)
from sft_engine.client.inputs import check_batch, chunks, image_chunks, plan_classify, preprocess_chunk, window_for
from sft_engine.client.metrics import resolve_metrics
from sft_engine.client.model_info import ModelInfo, labels_from_classification
from sft_engine.client.predictions import Prediction, top_k as rank
from sft_engine.client.retry import RetryPolicy, call_with_retry
from sft_engine.client.server_side import check_image_model, encode_images, image_model, missing_image_model, pinned_version, send_files
from sft_engine.client.settings import ClientSettings, SettingsView
from sft_engine.client.shm import ShmPool, ShmSlot, in_use, release_patience_s
from sft_engine.client.transport import make_transport
from sft_engine.client.wire import InferTarget

__all__ = ["Client"]

LOGGER = logging.getLogger(__name__)


class Client(SettingsView):
    """A classifier served by Triton. Use as a context manager; thread-safe.

    >>> with Client("127.0.0.1:8001", model="resnet18") as client:
    ...     for preds in client.classify(["cat.jpg", "dog.png"], top_k=3):
    ...         print([(p.label, round(p.score, 3)) for p in preds])

    ``version`` None = the latest the server serves. ``timeout`` (seconds) bounds
    each call. ``retries`` = extra attempts on transient failures (or a RetryPolicy).
    ``shared_memory`` sends tensors through system shared memory (same host only).
    ``metrics``: True, a prometheus CollectorRegistry or a ClientMetrics records a
    latency histogram. ``concurrency``: worker threads for HTTP and shared-memory sends
    (gRPC sends asynchronously without threads), shared-memory slots, and the least
    number of chunks per preparation window. ``labels`` skips reading them.
    """

    def __init__(self, url: str = "127.0.0.1:8001", *, protocol: str = "grpc", model: str, version: int | str | None = None,
                 timeout: float = 30.0, retries: int | RetryPolicy | None = 2, shared_memory: bool = False, metrics: Any = None,
                 concurrency: int = 4, labels: Sequence[str] | None = None) -> None:
        self.settings = ClientSettings.create(url, protocol=protocol, model=model, version=version, timeout=timeout, retries=retries,
                                              shared_memory=shared_memory, concurrency=concurrency, labels=labels)
        self._metrics = resolve_metrics(metrics)
        self._transport = make_transport(self.settings.url, self.settings.protocol, self.settings.timeout_s, self.settings.concurrency)
        self._lock = threading.RLock()
        self._info: ModelInfo | None = None
        self._image_info: ModelInfo | None = None
        self._target: InferTarget | None = None
        self._labels: list[str] | None = list(self.settings.labels) if self.settings.labels is not None else None
        self._executor: ThreadPoolExecutor | None = None
        self._shm: ShmPool | None = None
        self._slots: "queue.Queue[ShmSlot] | None" = None
        self._closed = False
        self._plain = not self.settings.shared_memory and self._metrics is None

    # -- health -------------------------------------------------------------------------
    def is_live(self) -> bool:
        """Whether the server answers its liveness check (False when it cannot be reached)."""
        self._check_open()
        try:
            return self._transport.is_live()
        except (ServerUnavailable, RequestTimeout):
            return False

    def is_ready(self) -> bool:
        """Whether the server is ready and serves this model (and version)."""
        self._check_open()
        try:
            return self._transport.is_ready() and self._transport.is_model_ready(self.model, self.settings.version)
        except (ServerUnavailable, RequestTimeout):
            return False

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Block until ``is_ready()``; raises ServerUnavailable or ModelNotReady/ModelNotFound after ``timeout`` s."""
        self._check_open()
        deadline = time.monotonic() + timeout
        reached = False
        last: ClientError | None = None
        while True:
            try:
                if self._transport.is_ready() and self._transport.is_model_ready(self.model, self.settings.version):
                    return
                reached = True
            except (ServerUnavailable, RequestTimeout) as exc:
                last = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(interval, remaining))
        if not reached:
            raise ServerUnavailable(f"the {self.protocol} server at {self.url} did not answer within {timeout:g} s",
                                    hint="start the server (sft-engine serve), or check the URL and protocol") from last
        raise self._not_ready(timeout)

    def _not_ready(self, timeout: float) -> ClientError:
        what = f"model {self.model!r}" + (f" version {self.version}" if self.version else "")
        err: ClientError = ModelNotFound(f"{what} did not become ready within {timeout:g} s")
        try:
            index = self._transport.repository_index()
        except ClientError:
            index = None
        refined = refine_not_found(err, index, self.model, self.settings.version)
        if refined is err:  # no index: say what we know
            return ModelNotReady(err.message, hint="check the server log; load the model or raise the timeout")
        return refined

    # -- model ----------------------------------------------------------------------------
    @property
    def model_info(self) -> ModelInfo:
        """The model's interface, read from the server once."""
        info = self._info
        if info is None:
            with self._lock:
                if self._info is None:
                    self._info = self._load_info()
                    self._target = self._info.target()
                info = self._info
        return info

    @property
    def model_config(self) -> dict[str, Any]:
        """The model's Triton configuration (JSON form, dims as integers)."""
        return dict(self.model_info.config)

    @property
    def labels(self) -> list[str]:
        """Class labels by index, read once through Triton's classification extension."""
        if self._labels is None:
            with self._lock:
                if self._labels is None:
                    self._labels = self._load_labels()
        return list(self._labels)

    def _load_info(self) -> ModelInfo:
        self._check_open()
        model, version = self.model, self.settings.version

        def fetch() -> ModelInfo:
            config = self._transport.model_config(model, version)
            metadata = self._transport.model_metadata(model, "")
            return ModelInfo.from_config(config, version=version, versions=metadata.get("versions", []))

        try:
            info = self._retrying(fetch)
        except ModelNotFound as exc:
            raise self._refined(exc) from exc
        LOGGER.debug("model %s: input %s %s %s, output %s %s, max_batch_size %d", info.name, info.input_name, info.input_datatype,
                     list(info.input_dims), info.output_name, list(info.output_dims), info.max_batch_size)
        return info

    def _load_labels(self) -> list[str]:
        info = self.model_info
        n = info.num_classes
        if not info.has_labels or n < 1:
            return [str(i) for i in range(max(n, 0))]
        probe = info.probe_input()
        target = self._target
        assert target is not None
        out = self._retrying(lambda: self._transport.infer(target, probe, class_count=n))
        return labels_from_classification(np.asarray(out).reshape(-1).tolist(), n)

    def _refined(self, exc: ModelNotFound) -> ClientError:
        try:
            index = self._transport.repository_index()
        except ClientError:
            return exc
        return refine_not_found(exc, index, self.model, self.settings.version)

    # -- inference --------------------------------------------------------------------------
    def infer(self, batch: Any, *, split: bool = True) -> np.ndarray:
        """Raw model outputs (logits) for an input batch (numpy or torch), shape ``[N, *output_dims]``.

        Batches larger than ``max_batch_size`` are sent as concurrent chunks (order
        kept); with ``split=False`` they are a ``BadInput`` instead.
        """
        if self._closed:
            self._check_open()
        info = self._info or self.model_info
        array = check_batch(batch, info, split=split)
        if len(array) <= info.chunk_size:
            return self._send(array)
        parts = chunks(array, info.chunk_size)
        return np.concatenate(self._run(_same, parts, window=len(parts)))  # already in memory: one window

    def classify(self, images: Any, top_k: int = 5, *, server_side: bool = False) -> list[list[Prediction]]:
        """The ``top_k`` most likely classes per image, best first; scores are softmax probabilities.

        ``images``: file paths, PIL images, HWC uint8 arrays (or a list of them, or an
        NHWC uint8 array), or a ready NCHW float batch (numpy or torch). With
        ``server_side=True`` the files themselves (or ``bytes``) go to ``<model>_image``,
        which decodes and preprocesses them on the server exactly as the client would.
        """
        self._check_open()
        k = _check_top_k(top_k)
        started = time.perf_counter()
        if server_side:
            blobs = encode_images(images)
            logits = send_files(self._transport, self._image_model_info(), blobs, self._retrying)
        else:
            info = self.model_info
            plan = plan_classify(images, info)
            if plan.ready is not None:
                logits = self.infer(plan.ready)
            else:
                def prepare(chunk: Sequence[Any]) -> np.ndarray:
                    return preprocess_chunk(chunk, info)

                parts = list(image_chunks(plan.images, info.chunk_size))
                logits = np.concatenate(self._run(prepare, parts, window=window_for(info, len(parts), self.settings.concurrency)))
        results = rank(logits, k, self.labels)
        if self._metrics is not None:
            self._metrics.observe(self.model, self.protocol, "classify", time.perf_counter() - started)
        return results

    def _image_model_info(self) -> ModelInfo:
        """``<model>_image``'s interface, read once (the server-side classify path)."""
        if self._image_info is None:
            self._check_open()
            pinned_version(self.model, self.settings.version)
            name = image_model(self.model)
            try:
                info = self._retrying(lambda: ModelInfo.from_config(self._transport.model_config(name, "")))
            except ModelNotFound as exc:
                raise missing_image_model(exc, self.model) from exc
            self._image_info = check_image_model(info)
        return self._image_info

    def _send(self, array: np.ndarray, first_error: ClientError | None = None) -> np.ndarray:
        """One blocking request with retries, shared memory and metrics as configured.

        ``first_error``: the failure of an earlier asynchronous try of the same request.
        The plain case (no shared memory, no metrics, first try) is kept to a minimum
        of Python work: it is what batch-1 latency pays on every request.
        """
        info, target = self._info, self._target
        assert info is not None and target is not None
        batching = info.batching
        payload = array if batching else array[0]
        if first_error is None and self._plain:
            try:
                out = self._transport.infer(target, payload)
                return out if batching else out[None]
            except ClientError as exc:
                first_error = exc
        metrics = self._metrics
        started = time.perf_counter()
        try:
            if self.settings.shared_memory:
                out = self._retrying(self._infer_shm, target, payload, first_error=first_error)
            else:
                out = self._retrying(self._transport.infer, target, payload, first_error=first_error)
        except ModelNotFound as exc:
            err = self._refined(exc)
            self._failed(err)
            raise err from exc
        except ClientError as exc:
            self._failed(exc)
            raise
        if metrics is not None:
            metrics.observe(self.model, self.protocol, "infer", time.perf_counter() - started)
        return out if batching else out[None]

    def _infer_shm(self, target: InferTarget, payload: np.ndarray) -> np.ndarray:
        slots = self._shm_slots()
        slot = slots.get()
        try:
            return self._transport.infer(target, payload, slot=slot)
        except RequestTimeout:
            slot = self._replacement(slot)
            raise
        finally:
            slots.put(slot)

    def _run(self, prepare: Callable[[Any], np.ndarray], items: Sequence[Any], window: int) -> list[np.ndarray]:
        """Prepare items a window at a time and send each window at once; results in input order.

        A window is prepared (for ``classify``: decoded and preprocessed) with nothing
        of it in flight, then all its chunks are sent; while they run the next window is
        prepared, and before sending it the client collects the window before the
        last, so at most two windows are held. Why windows rather than one chunk at a
        time: preparing competes with the request completions for the GIL (and, on
        a small host, with the server for the CPU), which delays completions and
        leaves the server idle; measured, "prepare everything, then send everything"
        was the fastest hand-written approach, and for small jobs one window is
        exactly that. gRPC sends with tritonclient's ``async_infer`` (no threads),
        HTTP and shared memory through ``concurrency`` worker threads.
        """
        if len(items) == 1:
            return [self._send(prepare(items[0]))]
        pending: collections.deque[tuple[np.ndarray, Future[np.ndarray]]] = collections.deque()
        results: list[np.ndarray] = []
        try:
            for start in range(0, len(items), window):
                while len(pending) > window:  # keep only the previous window in flight while preparing
                    results.append(self._outcome(*pending.popleft()))
                arrays = [prepare(item) for item in items[start:start + window]]
                pending.extend((array, self._dispatch(array)) for array in arrays)
            while pending:
                results.append(self._outcome(*pending.popleft()))
            return results
        except BaseException:
            for _, future in pending:
                future.cancel()
            raise

    def _dispatch(self, array: np.ndarray) -> "Future[np.ndarray]":
        if self.settings.shared_memory:  # slots, their replacement and retries live in the blocking path
            return self._pool().submit(self._send, array)
        info, target, metrics = self._info, self._target, self._metrics
        assert info is not None and target is not None
        started = time.perf_counter()
        future = self._transport.submit(target, array if info.batching else array[0])
        if metrics is not None:
            def observe(done: "Future[np.ndarray]") -> None:
                if not done.cancelled() and done.exception() is None:
                    metrics.observe(self.model, self.protocol, "infer", time.perf_counter() - started)

            future.add_done_callback(observe)
        return future

    def _outcome(self, array: np.ndarray, future: "Future[np.ndarray]") -> np.ndarray:
        try:
            out = future.result()
        except ClientError as exc:
            if self.settings.shared_memory:
                raise  # _send already retried and counted it
            return self._send(array, first_error=exc)  # retries per policy, or raises the refined error
        assert self._info is not None
        return out if (self.settings.shared_memory or self._info.batching) else out[None]

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="sft-client")
        return self._executor

    def _retrying(self, fn: Callable[..., Any], *args: Any, first_error: ClientError | None = None) -> Any:
        """``fn(*args)`` under the retry policy (the first try costs no more than a plain call)."""
        if first_error is None:
            try:
                return fn(*args)
            except ClientError as exc:
                first_error = exc
        policy = self.settings.retry
        if not policy.should_retry(first_error, idempotent=True):
            raise first_error
        return call_with_retry(lambda: fn(*args), policy, idempotent=True, what=f"{self.model} {getattr(fn, '__name__', 'call')}",
                               already_failed=first_error)

    def _failed(self, exc: ClientError) -> None:
        if self._metrics is not None:
            self._metrics.failed(self.model, self.protocol, "infer", exc)

    # -- shared memory -------------------------------------------------------------------------
    def _shm_slots(self) -> "queue.Queue[ShmSlot]":
        if self._slots is None:
            with self._lock:
                if self._slots is None:
                    self._slots = self._setup_shm()
        return self._slots

    def _setup_shm(self) -> "queue.Queue[ShmSlot]":
        info = self.model_info
        in_bytes, out_bytes = info.shm_sizes()
        pool = ShmPool(0, in_bytes, out_bytes)
        self._shm = pool
        slots: queue.Queue[ShmSlot] = queue.Queue()
        for _ in range(self.settings.concurrency):
            slots.put(self._register(pool.add_slot()))
        LOGGER.debug("shared memory: %d slots of %d + %d bytes", self.settings.concurrency, in_bytes, out_bytes)
        return slots

    def _register(self, slot: ShmSlot) -> ShmSlot:
        for name, key, size in slot.registrations():
            self._transport.register_shm(name, key, size)
        return slot

    def _replacement(self, slot: ShmSlot) -> ShmSlot:
        """A fresh slot for one whose request timed out: the server may still write into the old one."""
        assert self._shm is not None
        try:
            return self._register(self._shm.add_slot())
        except ClientError as exc:
            LOGGER.warning("cannot replace a timed-out shared memory slot (%s); reusing it", exc)
            return slot

    def shared_memory_regions(self) -> list[str]:
        """Names of this client's shared memory regions (empty when shared memory is off or closed)."""
        return self._shm.names if self._shm is not None else []

    # -- lifecycle ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClientError(f"the client for model {self.model!r} is closed", hint="create a new Client")

    def close(self) -> None:
        """Finish in-flight requests, unregister and remove shared memory, close connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        pool, self._shm, self._slots = self._shm, None, None
        try:
            if pool is not None:
                self._unregister(pool.names)
        finally:
            if pool is not None:
                pool.destroy()
            self._transport.close()

    def _unregister(self, names: list[str]) -> None:
        """Unregister regions; retry those a timed-out request still uses, for a bounded time."""
        deadline = time.monotonic() + release_patience_s(self.settings.timeout_s)
        delay = 0.02
        while names:
            busy = []
            for name in names:
                try:
                    self._transport.unregister_shm(name)
                except ClientError as exc:
                    if in_use(exc) and time.monotonic() < deadline:
                        busy.append(name)
                    else:  # the server may be gone; the local regions are removed anyway
                        LOGGER.warning("cannot unregister shared memory region %s: %s", name, exc.message)
            names = busy
            if names:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _check_top_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BadInput(f"top_k must be an integer >= 1, given {k!r}", hint="e.g. --top-k 5 (top_k=5 in Python)", expected=">= 1", given=k)
    return int(k)

