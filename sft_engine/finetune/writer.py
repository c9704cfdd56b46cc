"""The fine-tune output directory, written so that it is never complete by accident.

Layout of ``--output DIR``::

    DIR/model.safetensors      best epoch's weights (written at the end)
    DIR/metadata.json          what `sft-engine build --from-finetune DIR` reads (written last)
    DIR/metrics.json|.csv      one row per epoch (rewritten after each epoch)
    DIR/holdout/<class>/<n>.*  labelled validation images for build's accuracy gate (see holdout.py)
    DIR/train_state/           resumable state while training (last.pt, best.safetensors)

Every file is written to a temporary name in the same directory, flushed to disk and
renamed over the final name (``os.replace`` is atomic), and ``metadata.json`` - which
records the sha256 of ``model.safetensors`` - is the last file written. A run that is
interrupted or fails at any point therefore leaves no ``metadata.json``, or the
previous complete one: never a checkpoint that looks complete but is not.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from sft_engine.errors import ConfigError, ModelError
from sft_engine.finetune.config import FinetuneConfig

__all__ = [
    "FORMAT",
    "METADATA_KEYS",
    "WEIGHTS_NAME",
    "METADATA_NAME",
    "METRICS_JSON",
    "METRICS_CSV",
    "STATE_DIR",
    "HOLDOUT_DIR",
    "atomic_write",
    "fsync_dir",
    "atomic_write_text",
    "check_output",
    "prepare_output",
    "is_complete",
    "write_metrics",
    "make_metadata",
    "write_final",
    "read_metadata",
]

LOGGER = logging.getLogger(__name__)

FORMAT = "sft-engine/finetune@1"
WEIGHTS_NAME = "model.safetensors"
METADATA_NAME = "metadata.json"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
STATE_DIR = "train_state"
HOLDOUT_DIR = "holdout"
LAST_STATE = "last.pt"
BEST_WEIGHTS = "best.safetensors"

#: the keys of metadata.json that `sft-engine build --from-finetune` relies on
METADATA_KEYS = (
    "format",
    "arch",
    "num_classes",
    "labels",
    "input_size",
    "mean",
    "std",
    "weights",
    "weights_sha256",
    "pretrained",
    "reg",
    "reg_lambda",
    "best_epoch",
    "best_top1",
    "epochs",
    "dataset",
    "seed",
    "created",
    "torch_version",
)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported everywhere (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary name next to ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def is_complete(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a finished fine-tune (its metadata.json)."""
    return (Path(out_dir) / METADATA_NAME).is_file()


def check_output(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an output directory this run may not use; changes nothing.

    A new run refuses a directory that holds an earlier run (finished or not) unless
    ``overwrite``; ``resume`` needs an interrupted, unfinished run there.
    """
    state = out_dir / STATE_DIR / LAST_STATE
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--output {out_dir} is a file", hint="pass a directory path")
    if resume:
        if is_complete(out_dir):
            raise ConfigError(f"{out_dir} holds a finished fine-tune; there is nothing to resume", hint="use it as it is, or pass --overwrite to train again")
        if not state.is_file():
            raise ConfigError(f"{out_dir} holds no interrupted run to resume ({STATE_DIR}/{LAST_STATE} is missing)", hint="run again without --resume")
    elif (is_complete(out_dir) or state.is_file()) and not overwrite:
        raise ConfigError(
            f"{out_dir} already holds a fine-tune run",
            hint="pass --resume to continue it, --overwrite to replace it, or another --output",
        )


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir`` for a new run, clearing an earlier run's files if ``overwrite``.

    The old ``metadata.json`` is removed *first*, so the directory stops looking
    complete before anything else changes.
    """
    check_output(out_dir, resume=False, overwrite=overwrite)
    if overwrite and (is_complete(out_dir) or (out_dir / STATE_DIR).exists()):
        LOGGER.info("overwriting the earlier run in %s", out_dir)
        (out_dir / METADATA_NAME).unlink(missing_ok=True)
        for name in (WEIGHTS_NAME, METRICS_JSON, METRICS_CSV):
            (out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
        shutil.rmtree(out_dir / HOLDOUT_DIR, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STATE_DIR).mkdir(exist_ok=True)


def write_metrics(out_dir: Path, history: Sequence[dict[str, Any]]) -> None:
    """Per-epoch metrics as JSON (a list of rows) and CSV (same columns)."""
    atomic_write_text(out_dir / METRICS_JSON, json.dumps(list(history), indent=2) + "\n")
    buffer = io.StringIO()
    if history:
        columns = list(history[0])
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    atomic_write_text(out_dir / METRICS_CSV, buffer.getvalue())


def make_metadata(
    config: FinetuneConfig,
    labels: list[str],
    dataset: str,
    best_epoch: int,
    best_top1: float,
    epochs_run: int,
    training: dict[str, Any],
    holdout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata.json document, except ``weights_sha256`` (added when the weights exist).

    ``holdout`` describes the labelled images kept under ``DIR/holdout`` (None: none
    were kept); it is not among ``METADATA_KEYS``, so outputs of earlier versions,
    which lack it, still build.
    """
    import torch

    return {
        "format": FORMAT,
        "arch": config.arch,
        "num_classes": len(labels),
        "labels": list(labels),
        "input_size": int(config.input_size or 0),
        "mean": [float(v) for v in config.mean],
        "std": [float(v) for v in config.std],
        "weights": WEIGHTS_NAME,
        "weights_sha256": "",
        "pretrained": config.pretrained,
        "reg": config.reg,
        "reg_lambda": float(config.reg_lambda or 0.0),
        "best_epoch": int(best_epoch),
        "best_top1": float(best_top1),
        "epochs": int(epochs_run),
        "dataset": dataset,
        "seed": int(config.seed),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        # the whole preprocessing record (crop mode, resize size, interpolation too) under
        # training.preprocessing: outputs of earlier versions lack it and build with the plain resize
        "training": {**training, "preprocessing": config.preprocessing.to_parameters()},
        "holdout": holdout,
    }


def write_final(out_dir: Path, model: nn.Module, metadata: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``model.safetensors``, then ``metadata.json`` with its sha256; return both paths."""
    from sft_engine.models import save_state_dict, sha256_file

    weights = out_dir / WEIGHTS_NAME
    st_meta = {"format": FORMAT, "arch": metadata["arch"], "num_classes": str(metadata["num_classes"]), "labels": json.dumps(metadata["labels"])}
    atomic_write(weights, lambda tmp: save_state_dict(model, tmp, st_meta))
    metadata = {**metadata, "weights_sha256": sha256_file(weights)}
    meta_path = atomic_write_text(out_dir / METADATA_NAME, json.dumps(metadata, indent=2) + "\n")
    return weights, meta_path


def read_metadata(out_dir: str | Path) -> dict[str, Any]:
    """The metadata.json of a finished fine-tune, checked for format and weights."""
    path = Path(out_dir) / METADATA_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{out_dir} is not a finished fine-tune (no {METADATA_NAME})", hint="run sft-engine finetune --output DIR to completion first") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} cannot be read: {exc}", hint="run the fine-tune again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"{path} is not sft-engine fine-tune metadata (format {data.get('format') if isinstance(data, dict) else None!r})", hint=f"expected format {FORMAT}")
    missing = [k for k in METADATA_KEYS if k not in data]
    if missing:
        raise ModelError(f"{path} lacks keys: {', '.join(missing)}", hint="run the fine-tune again")
    return data
