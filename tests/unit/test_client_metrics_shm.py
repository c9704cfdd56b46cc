"""Optional parts: the Prometheus histogram, and shared memory regions that never leak."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sft_engine.client.metrics import ClientMetrics, resolve_metrics
from sft_engine.client.shm import ShmPool
from sft_engine.errors import ConfigError


def test_metrics_are_shared_per_registry_and_record():
    registry = CollectorRegistry()
    m = resolve_metrics(registry)
    assert resolve_metrics(registry) is m, "a second client must reuse the registry's metrics"
    m.observe("demo", "grpc", "infer", 0.003)
    m.observe("demo", "grpc", "infer", 0.2)
    m.failed("demo", "grpc", "infer", TimeoutError())
    labels = {"model": "demo", "protocol": "grpc", "call": "infer"}
    assert registry.get_sample_value("sft_engine_client_request_seconds_count", labels) == 2
    assert registry.get_sample_value("sft_engine_client_request_seconds_bucket", {**labels, "le": "0.005"}) == 1
    assert registry.get_sample_value("sft_engine_client_errors_total", {**labels, "error": "TimeoutError"}) == 1


def test_metrics_argument_forms():
    assert resolve_metrics(None) is None and resolve_metrics(False) is None
    own = ClientMetrics(CollectorRegistry())
    assert resolve_metrics(own) is own
    with pytest.raises(ConfigError):
        resolve_metrics("yes")


def _exists(key: str) -> bool:
    return os.path.exists("/dev/shm" + key)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs POSIX shared memory in /dev/shm")
def test_shm_pool_round_trips_and_removes_its_regions():
    pool = ShmPool(2, in_bytes=64, out_bytes=32)
    keys = [k for _, k, _ in pool.registrations()]
    assert len(keys) == 4 and len(set(pool.names)) == 4 and all(_exists(k) for k in keys)
    slot = pool.slots[0]
    x = np.arange(16, dtype=np.float32)
    assert slot.write_input(x) == 64
    extra = pool.add_slot()
    assert extra.in_name not in keys and _exists(extra.in_key)
    pool.destroy()
    pool.destroy()  # idempotent
    assert not any(_exists(k) for k in keys + [extra.in_key, extra.out_key])


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs POSIX shared memory in /dev/shm")
def test_shm_pool_is_cleaned_up_when_forgotten():
    pool = ShmPool(1, in_bytes=16, out_bytes=16)
    keys = [k for _, k, _ in pool.registrations()]
    assert all(_exists(k) for k in keys)
    del pool
    gc.collect()
    assert not any(_exists(k) for k in keys)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs POSIX shared memory in /dev/shm")
def test_shm_slot_refuses_oversized_batches():
    from sft_engine.client.errors import ClientError

    pool = ShmPool(1, in_bytes=16, out_bytes=16)
    try:
        with pytest.raises(ClientError):
            pool.slots[0].write_input(np.zeros(8, np.float32))
    finally:
        pool.destroy()
