"""sft-engine: fine-tune a pretrained vision model, compile it, publish it to a Triton
model repository, serve it and load-test it."""

from sft_engine.errors import (
    ConfigError,
    DataError,
    ExportError,
    LoadTestError,
    ModelError,
    ParityError,
    RepositoryError,
    ServerError,
    SftEngineError,
    TargetUnavailable,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "ExportError",
    "LoadTestError",
    "ModelError",
    "ParityError",
    "RepositoryError",
    "ServerError",
    "SftEngineError",
    "TargetUnavailable",
    "__version__",
]
