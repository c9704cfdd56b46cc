"""The GPUs a build runs on (``engines/gpu/devices``).

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import pytest

from sft_engine.engines.gpu.devices import GpuInfo, select_gpus
from sft_engine.errors import ConfigError


def test_select_gpus():
    gpus = [GpuInfo(0, "A", "9.0", 80.0), GpuInfo(1, "B", "8.0", 40.0)]
    assert select_gpus((), gpus) == gpus
    assert select_gpus((1, 1), gpus) == [gpus[1]]
    with pytest.raises(ConfigError, match="GPU 2"):
        select_gpus((2,), gpus)
