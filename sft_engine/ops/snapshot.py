"""What a server serves of one model, taken before a change and put back after it.

Rollout and tune both change what a *running* server serves and both must be able to
undo it: rollout when its check fails, tune when it has tried its candidates on a
shared server. The state worth keeping is the versions that are READY and the
configuration the server reports for them (which may differ from the one on disk, e.g.
after an earlier tune); putting it back is one load request naming exactly those
versions - or an unload, when nothing was served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from sft_engine.ops.model_control import ModelControl
from sft_engine.ops.modelconfig import with_versions

__all__ = ["ServingSnapshot"]


@dataclass(frozen=True)
class ServingSnapshot:
    """The READY versions of ``model`` and the live configuration they run with."""

    model: str
    versions: tuple[int, ...]
    #: the server's configuration of the model; None when no version was READY
    config: Mapping[str, Any] | None

    @classmethod
    def take(cls, control: ModelControl, model: str) -> "ServingSnapshot":
        versions = tuple(control.ready_versions(model))
        return cls(model, versions, control.live_config(model) if versions else None)

    @property
    def serving(self) -> bool:
        return bool(self.versions)

    def restore(self, control: ModelControl) -> None:
        """Serve exactly the snapshot's versions with its configuration again (or unload the model).

        Raises ``LoadFailed`` (or ``ServerError``) when the server refuses; the caller
        decides how loudly to report it and whether to wait for the versions it added to go.
        """
        if self.config is not None:
            control.load(self.model, with_versions(self.config, self.versions))
        else:
            control.unload(self.model)
