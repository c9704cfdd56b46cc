"""``Client`` against an in-memory transport: what it does above the wire."""

from __future__ import annotations

import numpy as np
import pytest

from sft_engine.client import Client
from sft_engine.client.errors import BadInput, ClientError, ModelNotFound, ModelNotReady, ServerUnavailable
from sft_engine.errors import ConfigError
from tests.unit.client_fakes import FAST, LABELS, SIZE, FakeAsyncTransport, FakeServer, FakeTransport, batch, logits_of, toy_config


def client(server: FakeServer, **kw) -> Client:
    return Client(model=kw.pop("model", "toy"), transport=FakeTransport(server), **kw)


def test_model_info_is_read_lazily_and_once():
    server = FakeServer()
    c = client(server)
    assert sum(server.calls.values()) == 0  # constructing talks to nobody
    assert c.model_info.max_batch_size == 4 and c.model_config["name"] == "toy"
    c.infer(batch(2))
    c.infer(batch(1))
    assert (server.calls["model_config"], server.calls["model_metadata"]) == (1, 1)
    assert c.model_info.versions == ("1",)


def test_batches_above_max_batch_size_are_split_and_kept_in_order():
    server = FakeServer()
    x = batch(10)
    out = client(server).infer(x)
    assert [shape[0] for shape in server.batches] == [4, 4, 2]
    np.testing.assert_array_equal(out, logits_of(x))
    with pytest.raises(BadInput, match="max_batch_size"):
        client(FakeServer()).infer(x, split=False)


def test_an_unbatched_model_gets_items_without_a_batch_dimension():
    server = FakeServer(toy_config(max_batch_size=0))
    x = batch(3)
    out = client(server).infer(x)
    assert server.batches == [(3, SIZE, SIZE)] * 3
    np.testing.assert_array_equal(out, logits_of(x))


def test_classify_ranks_top_k_with_labels_read_once():
    server = FakeServer()
    c = client(server)
    x = batch(2)
    x[1, 0, 0, :3] = [9.0, 7.0, 8.0]  # item 1: cat, fox, dog
    preds = c.classify(x, top_k=2)
    assert [[p.label for p in row] for row in preds] == [["fox", "dog"], ["cat", "fox"]]
    assert preds[1][0].index == 0 and preds[1][0].logit == 9.0 and 0.5 < preds[1][0].score < 1.0
    assert [len(row) for row in c.classify(x, top_k=10)] == [3, 3]  # at most num_classes
    assert c.labels == LABELS and server.calls["infer"] == 1 + 2  # one classification probe, then two requests


def test_classify_prepares_images_with_the_recorded_preprocessing():
    server = FakeServer()
    images = [np.full((20, 30, 3), v, np.uint8) for v in range(5)]
    preds = client(server, labels=["a", "b", "c"]).classify(images, top_k=1)
    assert len(preds) == 5 and all(row[0].label in "abc" for row in preds)
    assert [shape[0] for shape in server.batches] == [4, 1] and server.calls["infer"] == 2  # labels= skips the probe


@pytest.mark.parametrize("k", [0, -1, True, 2.5, "3"])
def test_top_k_must_be_a_positive_integer(k):
    with pytest.raises(BadInput, match="top_k"):
        client(FakeServer()).classify(batch(1), top_k=k)


def test_transient_failures_are_retried_then_reported_with_attempts():
    server = FakeServer()
    server.fail("infer", ServerUnavailable("reset"), ServerUnavailable("reset"))
    c = client(server, retries=FAST, labels=LABELS)
    np.testing.assert_array_equal(c.infer(batch(1)), logits_of(batch(1)))
    assert server.calls["infer"] == 3
    server.fail("infer", *[ServerUnavailable("reset")] * 3)
    with pytest.raises(ServerUnavailable) as info:
        c.infer(batch(1))
    assert info.value.attempts == 3


def test_a_failed_chunk_of_a_split_batch_is_retried_alone():
    server = FakeServer()
    c = client(server, retries=FAST)
    c.model_info
    server.fail("infer", ServerUnavailable("reset"))
    x = batch(9)
    np.testing.assert_array_equal(c.infer(x), logits_of(x))
    assert server.calls["infer"] == 3 + 1


def test_bad_input_is_not_retried():
    server = FakeServer()
    server.fail("infer", BadInput("rejected"))
    with pytest.raises(BadInput):
        client(server, retries=FAST).infer(batch(1))
    assert server.calls["infer"] == 1


def test_not_found_is_refined_from_the_repository_index():
    with pytest.raises(ModelNotFound, match="not in the server's repository") as info:
        client(FakeServer(), model="nope").model_info
    assert "toy" in info.value.hint
    with pytest.raises(ModelNotReady, match="not ready: version 1 UNAVAILABLE"):
        client(FakeServer(unloaded=("toy",))).infer(batch(1))


def test_health_and_wait_until_ready():
    server = FakeServer()
    c = client(server)
    assert c.is_live() and c.is_ready()
    c.wait_until_ready(timeout=1)
    server.up = False
    assert c.is_live() is False and c.is_ready() is False
    with pytest.raises(ServerUnavailable, match="did not answer within"):
        c.wait_until_ready(timeout=0.05, interval=0.01)
    with pytest.raises(ModelNotReady, match="not ready"):
        client(FakeServer(unloaded=("toy",))).wait_until_ready(timeout=0.05, interval=0.01)


def test_transport_must_be_a_sync_transport():
    with pytest.raises(ConfigError, match="is not an instance of Transport"):
        Client(model="toy", transport=FakeAsyncTransport(FakeServer()))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="is not an instance of Transport"):
        Client(model="toy", transport=object())  # type: ignore[arg-type]


def test_shared_memory_needs_a_transport_that_has_it():
    with client(FakeServer(), shared_memory=True, retries=0) as c, pytest.raises(ClientError, match="does not support shared memory"):
        c.infer(batch(1))


def test_close_closes_the_transport_once_and_refuses_later_calls():
    transport = FakeTransport(FakeServer())
    with Client(model="toy", transport=transport) as c:
        c.infer(batch(1))
    c.close()
    assert transport.closed == 1
    with pytest.raises(ClientError, match="is closed"):
        c.infer(batch(1))
    with pytest.raises(ClientError, match="is closed"):
        c.classify(batch(1))
