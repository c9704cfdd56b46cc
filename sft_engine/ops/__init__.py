"""Operations: ship a version without dropping requests, tune serving to an SLO, deploy beyond one machine.

Modules: ``control`` (Triton's model-repository API), ``modelconfig`` (version
policies and serving knobs on the protobuf config), ``snapshot`` (what a server serves,
taken and put back), ``check`` (the rollout gate), ``rollout``, ``tune`` with
``tune_search`` (the candidates and their order), ``tune_bench`` (one candidate measured
by the load tester), ``tune_table`` (the printout) and ``tune_writer`` (publish a tuned config),
``deploy`` with ``k8s`` and ``compose`` (manifests for the NGC Triton container).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["Notify", "quiet"]

#: how an operation tells its caller what it is doing: one line at a time (the CLI prints them)
Notify = Callable[[str], None]


def quiet(_: str) -> None:
    """The Notify of a caller that does not want to hear."""

