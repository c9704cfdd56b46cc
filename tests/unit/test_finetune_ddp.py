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
