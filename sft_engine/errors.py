"""One error hierarchy for the whole product.

Every error the user can cause or meet carries a one-line ``message`` naming the
problem and a ``hint`` naming the fix; the CLI prints ``error: <message> (<hint>)``
and exits with code 2, never with a traceback.

    SftEngineError
    ├── ConfigError            bad flag, spec file, name or value
    ├── ModelError             unknown architecture, bad checkpoint, key/shape mismatch
    ├── ExportError            an engine could not be produced for a target
    │   └── TargetUnavailable  the target needs something this host lacks (CUDA, torch_tensorrt)
    ├── ParityError            the engine disagrees with the eager model beyond tolerance
    ├── RepositoryError        the model repository cannot be written as asked
    ├── ServerError            the embedded tritonserver cannot start or stopped
    ├── DataError              a dataset is empty, unreadable or inconsistent
    ├── DependencyError        installed packages that do not fit together (torch / torchvision)
    ├── ClientError            (sft_engine.client) errors seen by clients of a server
    └── LoadTestError          a load test cannot run as specified
"""

from __future__ import annotations

__all__ = [
    "SftEngineError",
    "ConfigError",
    "ModelError",
    "ExportError",
    "TargetUnavailable",
    "ParityError",
    "RepositoryError",
    "ServerError",
    "DataError",
    "DependencyError",
    "LoadTestError",
]


class SftEngineError(Exception):
    """Root of every error raised on purpose by sft-engine."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and the fix on one line, as the CLI prints it."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text

    def __str__(self) -> str:
        return self.one_line()


class ConfigError(SftEngineError):
    """A flag, a spec file, a name or a value is not acceptable."""


class ModelError(SftEngineError):
    """The model cannot be built or its weights cannot be loaded."""


class ExportError(SftEngineError):
    """An engine could not be produced for the requested target."""


class TargetUnavailable(ExportError):
    """The target needs something this host does not have."""


class ParityError(SftEngineError):
    """The engine's outputs differ from the eager model beyond tolerance."""

    def __init__(self, message: str, hint: str | None = None, report: object | None = None) -> None:
        super().__init__(message, hint)
        self.report = report


class RepositoryError(SftEngineError):
    """The model repository cannot be read or written as asked."""


class ServerError(SftEngineError):
    """The embedded tritonserver cannot be started or has stopped."""


class DataError(SftEngineError):
    """A dataset is empty, unreadable or inconsistent."""


class DependencyError(SftEngineError):
    """Installed packages do not fit together (a torchvision built for another torch)."""


class LoadTestError(SftEngineError):
    """A load test cannot run as specified."""
