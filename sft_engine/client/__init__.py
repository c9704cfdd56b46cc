"""Classify images with a model served by Triton, over gRPC or HTTP, sync or asyncio.

    from sft_engine.client import Client

    with Client("127.0.0.1:8001", model="resnet18") as client:
        for preds in client.classify(["cat.jpg", "dog.png"], top_k=3):
            print([(p.label, p.score) for p in preds])

``Client`` / ``AsyncClient`` read the model's configuration (tensor names, shapes,
``max_batch_size``, the preprocessing recorded by ``sft-engine build``) once and
apply it; every failure is a ``ClientError`` subclass. They talk through a
``Transport`` / ``AsyncTransport`` (tritonclient's unless ``transport=`` names
another, e.g. an in-memory fake in tests). See docs/client.md.
"""

from __future__ import annotations

from sft_engine.client.aio import AsyncClient
from sft_engine.client.base import AsyncTransport, Transport
from sft_engine.client.errors import (
    BadInput,
    ClientError,
    ModelNotFound,
    ModelNotReady,
    RequestTimeout,
    ServerSideError,
    ServerUnavailable,
)
from sft_engine.client.metrics import ClientMetrics
from sft_engine.client.model_info import ModelInfo
from sft_engine.client.predictions import Prediction
from sft_engine.client.retry import RetryPolicy
from sft_engine.client.sync import Client

__all__ = [
    "Client",
    "AsyncClient",
    "Transport",
    "AsyncTransport",
    "Prediction",
    "ModelInfo",
    "RetryPolicy",
    "ClientMetrics",
    "ClientError",
    "ServerUnavailable",
    "ModelNotFound",
    "ModelNotReady",
    "BadInput",
    "RequestTimeout",
    "ServerSideError",
]
