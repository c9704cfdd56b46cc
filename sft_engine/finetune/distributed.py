"""Single-process or ``torchrun`` multi-process training, behind one small interface.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process joins the process group (NCCL on
CUDA, Gloo on CPU) and trains on its own shard through DistributedDataParallel;
otherwise everything here is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch

from sft_engine.errors import ConfigError

__all__ = ["DistContext", "Shard", "replicas_agree", "setup", "teardown", "barrier", "all_reduce_sum", "is_initialized"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device(flag: str, local_rank: int, distributed: bool) -> torch.device:
    cuda = torch.cuda.is_available()
    if flag == "auto":
        flag = "cuda" if cuda else "cpu"
    if flag.startswith("cuda"):
        if not cuda:
            raise ConfigError(f"device {flag} was asked for but CUDA is not available", hint="pass --device cpu or --device auto")
        if distributed or flag == "cuda":
            return torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
    return torch.device(flag)


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def setup(device: str) -> DistContext:
    """Join the process group when launched by ``torchrun``; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = world_size > 1
    dev = _device(device, local_rank, distributed)
    owns = False
    if distributed and not is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        owns = True
        LOGGER.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, dev)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if ``setup`` joined it (a caller's own group is left alone)."""
    if ctx.owns_group and is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all processes (in place); identity when not distributed."""
    if is_initialized():
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values


def replicas_agree(model: torch.nn.Module) -> bool | None:
    """Whether every process holds bit-identical parameters; None when not distributed.

    DistributedDataParallel keeps the replicas in step only while every rank runs the same
    steps on gradients it averaged; a rank that skipped a step or diverged numerically would
    otherwise go unnoticed, since only rank 0 writes the checkpoint. The raw bytes of every
    parameter (with its name, shape and dtype) go into one SHA-256 per rank: a sum would miss
    two swapped values or a difference below its rounding. The digest, as four int64, is
    reduced with MAX and with MIN over the processes, on the parameters' device (NCCL
    reduces only CUDA tensors).
    """
    if not is_initialized():
        return None
    digest = _parameters_digest(model)
    device = next(model.parameters(), torch.empty(0)).device
    words = torch.frombuffer(bytearray(digest), dtype=torch.int64).to(device)
    high, low = words.clone(), words.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    return bool(torch.equal(high, low))


def _parameters_digest(model: torch.nn.Module) -> bytes:
    """SHA-256 over every parameter's name, shape, dtype and raw bytes, in the model's order."""
    sha = hashlib.sha256()
    for name, param in model.named_parameters():
        tensor = param.detach().to("cpu").contiguous()
        sha.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.digest()


class Shard(torch.utils.data.Sampler[int]):
    """Every ``world``-th index from ``rank``, without the padding DistributedSampler adds,
    so that summed evaluation counts each validation image exactly once."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
