"""Supervised fine-tuning: a pretrained model, a new head, the task's data.

Minimizes L_task(θ) + λ·L_pre(θ) (cross-entropy plus L2-SP, distillation or nothing)
and writes the checkpoint ``sft-engine build --from-finetune DIR`` reads: see
``writer`` for the output layout and ``docs/finetune.md`` for the user guide.

Names are imported on first use, so that the CLI (which reads the option lists in
``config``) does not pay for importing torch on every command.
"""

from __future__ import annotations

from sft_engine.lazy import lazy_exports

_LAZY = {
    "FORMAT": ".writer",
    "METADATA_KEYS": ".writer",
    "read_metadata": ".writer",
    "DataBundle": ".data",
    "build_datasets": ".data",
    "Distill": ".objective",
    "FinetuneObjective": ".objective",
    "L2SP": ".objective",
    "LossTerms": ".objective",
    "FinetuneConfig": ".config",
    "load_finetune_toml": ".config",
    "FinetuneResult": ".trainer",
    "finetune": ".trainer",
    "SyntheticDataset": ".synthetic",
    "make_synthetic_images": ".synthetic",
    "synthetic_labels": ".synthetic",
    "warmup_cosine": ".schedule",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
