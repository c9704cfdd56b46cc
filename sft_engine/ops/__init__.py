"""Operations: ship a version without dropping requests, tune serving to an SLO, deploy beyond one machine.

One subpackage per operation, over the modules they share:

* shared: ``model_control`` (Triton's model-repository API as rollout and tune need
  it), ``modelconfig`` (version policies and serving knobs on the protobuf config),
  ``snapshot`` (what a server serves, taken before a change and put back after it:
  rollout and tune both undo what they did, so it sits beside them, not in either);
* ``rollout``: ``runner`` (load, ready, check, switch, verify; roll back on failure)
  and ``check`` (the gate: the new version against the served one);
* ``tune``: ``config`` (what is asked, what was found), ``search`` (the candidates
  and their order), ``bench`` (one candidate measured by the load tester), ``table``
  (the printout), ``writer`` (publish a tuned config) and ``runner`` (a tune);
* ``deploy``: ``spec`` (options and the repository's facts), ``k8s`` and ``compose``
  (manifests for the NGC Triton container), ``writer`` (the files written).

The subpackages import the shared modules and never each other.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["Notify", "quiet"]

#: how an operation tells its caller what it is doing: one line at a time (the CLI prints them)
Notify = Callable[[str], None]


def quiet(_: str) -> None:
    """The Notify of a caller that does not want to hear."""

