"""Operations: ship a version without dropping requests, tune serving to an SLO, deploy beyond one machine.

Modules: ``control`` (Triton's model-repository API), ``modelconfig`` (version
policies and serving knobs on the protobuf config), ``check`` (the rollout gate),
``rollout``, ``tune`` and ``tune_writer`` (search and publish a tuned config),
``deploy`` with ``k8s`` and ``compose`` (manifests for the NGC Triton container).
"""

from __future__ import annotations

__all__: list[str] = []
