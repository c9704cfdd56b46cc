"""sft-engine: fine-tune a pretrained vision model, compile it, publish it to a Triton
model repository, serve it and load-test it.

The public API is this module's ``__all__`` (a test pins it). Heavy parts (torch,
tritonclient) are imported on first use, so ``import sft_engine`` stays cheap for a
service that only needs the client.
"""

from __future__ import annotations

from sft_engine.errors import (
    ConfigError,
    DataError,
    DependencyError,
    ExportError,
    LoadTestError,
    ModelError,
    ParityError,
    RepositoryError,
    ServerError,
    SftEngineError,
    TargetUnavailable,
)
from sft_engine.lazy import lazy_exports

__version__ = "0.1.0"

#: public name → module that defines it (imported lazily)
_LAZY = {
    "BuildConfig": "sft_engine.build_config",
    "BuildResult": "sft_engine.build",
    "build": "sft_engine.build",
    "Preprocessing": "sft_engine.preprocess",
    "ParityReport": "sft_engine.verify",
    "PublishedVersion": "sft_engine.repository.writer",
    "ServerConfig": "sft_engine.server",
    "TritonServer": "sft_engine.server",
    "build_model": "sft_engine.models",
    "load_weights": "sft_engine.models",
    "list_archs": "sft_engine.models",
    "Client": "sft_engine.client",
    "AsyncClient": "sft_engine.client",
    "ClientError": "sft_engine.client.errors",
    "Prediction": "sft_engine.client.predictions",
    "FinetuneConfig": "sft_engine.finetune",
    "finetune": "sft_engine.finetune",
    "FinetuneResult": "sft_engine.finetune",
    "LoadTestConfig": "sft_engine.loadtest",
    "run_loadtest": "sft_engine.loadtest",
    "LoadTestResult": "sft_engine.loadtest",
}

__all__ = [
    "ConfigError",
    "DataError",
    "DependencyError",
    "ExportError",
    "LoadTestError",
    "ModelError",
    "ParityError",
    "RepositoryError",
    "ServerError",
    "SftEngineError",
    "TargetUnavailable",
    "__version__",
    *sorted(_LAZY),
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
