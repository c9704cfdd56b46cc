"""The CUDA devices a GPU build may run on (``--build-gpu``, else every visible one)."""

from __future__ import annotations

from dataclasses import dataclass

from sft_engine.errors import ConfigError

__all__ = ["GpuInfo", "list_gpus", "select_gpus"]


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str
    memory_gib: float

    @property
    def sm(self) -> str:
        """``"9.0"`` → ``"sm90"`` (file names)."""
        return "sm" + self.compute_capability.replace(".", "")


def list_gpus() -> list[GpuInfo]:
    """The CUDA devices PyTorch sees (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        out.append(GpuInfo(index, props.name, f"{props.major}.{props.minor}", round(props.total_memory / 2**30, 1)))
    return out


def select_gpus(requested: tuple[int, ...], available: list[GpuInfo]) -> list[GpuInfo]:
    """The GPUs to build on: ``--build-gpu`` if given (validated), else every visible one."""
    if not requested:
        return list(available)
    by_index = {g.index: g for g in available}
    missing = [i for i in requested if i not in by_index]
    if missing:
        raise ConfigError(
            f"--build-gpu names GPU {missing[0]} but this host has {len(available)} CUDA device(s)",
            hint=f"use ids between 0 and {len(available) - 1}" if available else "run the build on a GPU host",
        )
    return [by_index[i] for i in dict.fromkeys(requested)]
