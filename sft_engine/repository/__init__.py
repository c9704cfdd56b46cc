"""Triton model repository: config through protobuf, atomic versioned writer, manifests."""

from sft_engine.repository.config import (
    DynamicBatchingSpec,
    InstanceGroupSpec,
    ModelConfigSpec,
    TensorSpec,
    parse_pbtxt,
    read_config,
    to_pbtxt,
    to_proto,
)
from sft_engine.repository.writer import PublishedVersion, list_versions, publish

__all__ = [
    "DynamicBatchingSpec",
    "InstanceGroupSpec",
    "ModelConfigSpec",
    "PublishedVersion",
    "TensorSpec",
    "list_versions",
    "parse_pbtxt",
    "publish",
    "read_config",
    "to_pbtxt",
    "to_proto",
]
