"""Supervised fine-tuning: a pretrained model, a new head, the task's data.

Minimizes L_task(θ) + λ·L_pre(θ) (cross-entropy plus L2-SP, distillation or nothing)
and writes the checkpoint ``sft-engine build --from-finetune DIR`` reads: see
``writer`` for the output layout and ``docs/finetune.md`` for the user guide.
"""

from __future__ import annotations

from sft_engine.finetune.config import FinetuneConfig, load_finetune_toml
from sft_engine.finetune.data import DataBundle, build_datasets
from sft_engine.finetune.objective import L2SP, Distill, FinetuneObjective, LossTerms
from sft_engine.finetune.schedule import warmup_cosine
from sft_engine.finetune.synthetic import SyntheticDataset, make_synthetic_images, synthetic_labels
from sft_engine.finetune.trainer import FinetuneResult, finetune
from sft_engine.finetune.writer import FORMAT, METADATA_KEYS, read_metadata

__all__ = [
    "FORMAT",
    "METADATA_KEYS",
    "DataBundle",
    "Distill",
    "FinetuneConfig",
    "FinetuneObjective",
    "FinetuneResult",
    "L2SP",
    "LossTerms",
    "SyntheticDataset",
    "build_datasets",
    "finetune",
    "load_finetune_toml",
    "make_synthetic_images",
    "read_metadata",
    "synthetic_labels",
    "warmup_cosine",
]
