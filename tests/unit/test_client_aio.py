"""``AsyncClient`` against an in-memory transport: the same behaviour as ``Client``, awaited."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sft_engine.client import AsyncClient
from sft_engine.client.errors import BadInput, ClientError, ModelNotFound, ModelNotReady, ServerUnavailable
from sft_engine.errors import ConfigError
from tests.unit.client_fakes import FAST, LABELS, SIZE, FakeAsyncTransport, FakeServer, FakeTransport, batch, logits_of, toy_config


def run(server: FakeServer, body, **kw):
    """``body(client)`` inside ``async with AsyncClient(...)`` on a fresh loop; returns its result."""
    transport = FakeAsyncTransport(server)

    async def main():
        async with AsyncClient(model=kw.pop("model", "toy"), transport=transport, **kw) as client:
            return await body(client)

    result = asyncio.run(main())
    assert transport.closed == 1
    return result


def test_model_info_is_read_lazily_and_once_even_by_concurrent_calls():
    server = FakeServer()

    async def body(c):
        with pytest.raises(ClientError, match="has not been read yet"):
            c.model_info  # a property cannot await: the read is the first call that needs it
        assert sum(server.calls.values()) == 0
        await asyncio.gather(c.infer(batch(1)), c.infer(batch(2)), c.get_model_config())
        return c.model_info, c.model_config

    info, config = run(server, body)
    assert info.max_batch_size == 4 and config["name"] == "toy"
    assert (server.calls["model_config"], server.calls["model_metadata"]) == (1, 1)


def test_batches_are_split_concurrently_and_kept_in_order():
    server = FakeServer()
    x = batch(10)
    out = run(server, lambda c: c.infer(x))
    assert sorted(shape[0] for shape in server.batches) == [2, 4, 4]
    np.testing.assert_array_equal(out, logits_of(x))
    with pytest.raises(BadInput, match="max_batch_size"):
        run(FakeServer(), lambda c: c.infer(x, split=False))


def test_an_unbatched_model_gets_items_without_a_batch_dimension():
    server = FakeServer(toy_config(max_batch_size=0))
    x = batch(3)
    np.testing.assert_array_equal(run(server, lambda c: c.infer(x)), logits_of(x))
    assert server.batches == [(3, SIZE, SIZE)] * 3


def test_classify_ranks_top_k_with_labels_read_once():
    server = FakeServer()
    x = batch(2)
    x[1, 0, 0, :3] = [9.0, 7.0, 8.0]

    async def body(c):
        first = await c.classify(x, top_k=2)
        await c.classify([np.zeros((9, 9, 3), np.uint8)] * 5, top_k=1)
        return first, c.labels

    preds, labels = run(server, body)
    assert [[p.label for p in row] for row in preds] == [["fox", "dog"], ["cat", "fox"]]
    assert labels == LABELS and server.calls["infer"] == 1 + 1 + 2


@pytest.mark.parametrize("k", [0, True, 1.5])
def test_top_k_must_be_a_positive_integer(k):
    with pytest.raises(BadInput, match="top_k"):
        run(FakeServer(), lambda c: c.classify(batch(1), top_k=k))


def test_transient_failures_are_retried_then_reported_with_attempts():
    server = FakeServer()
    server.fail("infer", ServerUnavailable("reset"), ServerUnavailable("reset"))
    np.testing.assert_array_equal(run(server, lambda c: c.infer(batch(1)), retries=FAST), logits_of(batch(1)))
    assert server.calls["infer"] == 3
    server.fail("infer", *[ServerUnavailable("reset")] * 3)
    with pytest.raises(ServerUnavailable) as info:
        run(server, lambda c: c.infer(batch(1)), retries=FAST)
    assert info.value.attempts == 3
    server.fail("infer", BadInput("rejected"))
    with pytest.raises(BadInput):
        run(server, lambda c: c.infer(batch(1)), retries=FAST)


def test_not_found_is_refined_from_the_repository_index():
    with pytest.raises(ModelNotFound, match="not in the server's repository"):
        run(FakeServer(), lambda c: c.get_model_info(), model="nope")
    with pytest.raises(ModelNotReady, match="not ready: version 1 UNAVAILABLE"):
        run(FakeServer(unloaded=("toy",)), lambda c: c.infer(batch(1)))


def test_health_and_wait_until_ready():
    server = FakeServer()

    async def body(c):
        assert await c.is_live() and await c.is_ready()
        await c.wait_until_ready(timeout=1)
        server.up = False
        assert await c.is_live() is False and await c.is_ready() is False
        with pytest.raises(ServerUnavailable, match="did not answer within"):
            await c.wait_until_ready(timeout=0.05, interval=0.01)

    run(server, body)
    with pytest.raises(ModelNotReady, match="not ready"):
        run(FakeServer(unloaded=("toy",)), lambda c: c.wait_until_ready(timeout=0.05, interval=0.01))


def test_transport_must_be_an_async_transport():
    with pytest.raises(ConfigError, match="is not an instance of AsyncTransport"):
        AsyncClient(model="toy", transport=FakeTransport(FakeServer()))  # type: ignore[arg-type]


def test_a_closed_client_refuses_calls():
    transport = FakeAsyncTransport(FakeServer())

    async def main():
        c = AsyncClient(model="toy", transport=transport)
        await c.close()
        await c.close()
        with pytest.raises(ClientError, match="is closed"):
            await c.infer(batch(1))

    asyncio.run(main())
    assert transport.closed == 1
