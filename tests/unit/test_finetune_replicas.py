"""``replicas_agree`` on two real Gloo processes: True for identical replicas, False when one rank differs.

Two interpreters join one process group over localhost; for each case both build the
same seeded model, rank 1 alters it (or not), and both ask whether the replicas agree.
Two of the alterations are ones a float64 sum per tensor cannot see (two values swapped,
+0.0 turned into -0.0); the third moves one value by one unit in the last place.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sft_engine.server import free_port

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]

CHANGES = ("none", "swap", "ulp", "signed_zero")

_RANKS = """
import sys
import torch
from sft_engine.finetune import distributed as dist

torch.distributed.init_process_group("gloo")
for change in sys.argv[1:]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].bias.zero_()
        if torch.distributed.get_rank() == 1:
            weight = model[0].weight.view(-1)
            if change == "swap":
                weight[[0, 1]] = weight[[1, 0]].clone()
            elif change == "ulp":
                weight[3] = torch.nextafter(weight[3], torch.tensor(float("inf")))
            elif change == "signed_zero":
                model[1].bias[0] = -0.0
    print("AGREE", change, dist.replicas_agree(model), flush=True)
torch.distributed.destroy_process_group()
"""


@pytest.fixture(scope="module")
def answers() -> dict[str, list[str]]:
    """Each case's answer on rank 0 and on rank 1."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, "-c", _RANKS, *CHANGES], env=dict(env, RANK=str(rank)), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [proc.communicate(timeout=150)[0] for proc in procs]
    found: dict[str, list[str]] = {change: [] for change in CHANGES}
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-2000:]
        for line in out.splitlines():
            if line.startswith("AGREE"):
                _, change, answer = line.split()
                found[change].append(answer)
    return found


def test_identical_replicas_agree(answers: dict[str, list[str]]) -> None:
    assert answers["none"] == ["True", "True"]


@pytest.mark.parametrize("change", ["swap", "ulp", "signed_zero"])
def test_one_rank_altered_disagrees_on_every_rank(answers: dict[str, list[str]], change: str) -> None:
    assert answers[change] == ["False", "False"]  # every rank learns it, not only the altered one


def test_not_distributed_is_none() -> None:
    import torch

    from sft_engine.finetune.distributed import replicas_agree

    assert replicas_agree(torch.nn.Linear(2, 2)) is None
