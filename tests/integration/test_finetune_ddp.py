"""The same command under ``torchrun``: two CPU processes (Gloo on loopback), one output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_torchrun_two_processes_write_one_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "sft_engine.cli", "finetune", "--device", "cpu", "--input-size", "32", "--epochs", "1",
        "--num-classes", "3", "--synthetic-train-size", "32", "--synthetic-val-size", "9", "--batch-size", "8",
        "--no-progress", "--output", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best val top-1") == 1  # rank 0 alone prints
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["training"]["world_size"] == 2
    rows = json.loads((out / "metrics.json").read_text())
    # top-1 over all 9 validation images, each counted once across the two shards
    assert round(rows[0]["val_top1"] * 9) == pytest.approx(rows[0]["val_top1"] * 9, abs=1e-6)


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """Both ranks end bit-identical, and 2 processes × batch 4 train the weights 1 process × batch 8 does.

    A linear probe without augmentation keeps the comparison exact up to float rounding:
    the frozen backbone's BatchNorm uses its running statistics (no per-process batch
    statistics), and the averaged head gradient over two shards of 4 equals the mean over 8.
    """
    from safetensors.torch import load_file

    common = ["finetune", "--device", "cpu", "--input-size", "32", "--epochs", "2", "--num-classes", "3",
              "--synthetic-train-size", "32", "--synthetic-val-size", "9", "--freeze-backbone", "--no-augment",
              "--lr", "0.05", "--seed", "3", "--no-progress", "--holdout-images", "0"]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    two, one = tmp_path / "two", tmp_path / "one"
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "sft_engine.cli", *common, "--batch-size", "4", "--output", str(two)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "sft_engine.cli", *common, "--batch-size", "8", "--output", str(one)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    meta_two = json.loads((two / "metadata.json").read_text())["training"]
    assert meta_two["world_size"] == 2 and meta_two["replicas_identical"] is True
    assert json.loads((one / "metadata.json").read_text())["training"]["replicas_identical"] is None
    a, b = load_file(str(two / "model.safetensors")), load_file(str(one / "model.safetensors"))
    assert a.keys() == b.keys()
    head = [k for k in a if not k.startswith(("conv1", "bn1", "layer"))]
    assert head, "the head's parameters are compared"
    for key in a:
        assert a[key].float().allclose(b[key].float(), atol=1e-5, rtol=1e-4), key
