"""Typed settings of one fine-tuning run, validated once with errors that name the key.

Flags, a TOML file (keys at the top level or under ``[finetune]``) and Python callers
all end up in ``FinetuneConfig``; ``validated()`` coerces types, resolves the ``auto``
values (regularizer, λ, device-dependent choices stay for the trainer) and refuses
anything that would make the run meaningless - a negative λ, L2-SP without a
pretrained starting point - before a single file is written.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from sft_engine.errors import ConfigError
from sft_engine.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from sft_engine.settings import load_toml, resolve_relative, section, strict_updates

__all__ = [
    "FinetuneConfig",
    "DATASETS",
    "OPTIMIZERS",
    "REGULARIZERS",
    "AMP_MODES",
    "DEFAULT_LAMBDA",
    "DEFAULT_LAYER_DECAY",
    "LAYER_DECAY_FAMILIES",
    "default_layer_decay",
    "load_finetune_toml",
]

DATASETS = ("synthetic", "cifar10", "imagefolder")
OPTIMIZERS = ("adamw", "sgd")
REGULARIZERS = ("auto", "none", "l2sp", "distill")
AMP_MODES = ("auto", "none", "bf16", "fp16")
SYNTHETIC_VARIANTS = ("a", "b")

#: λ used when ``reg_lambda`` is not given; chosen from benchmarks/finetune_l2sp_experiment.py
DEFAULT_LAMBDA = {"none": 0.0, "l2sp": 0.1, "distill": 1.0}


#: families fine-tuned with layer-wise learning-rate decay in their papers (BEiT, MAE, DeiT III, Swin
#: fine-tuning recipes); ``layer_decay = "auto"`` gives them ``DEFAULT_LAYER_DECAY``, the others none
LAYER_DECAY_FAMILIES = ("vit", "deit", "beit", "eva", "swin", "cait", "xcit", "flexivit")
DEFAULT_LAYER_DECAY = 0.75


def default_layer_decay(arch: str) -> float:
    """``DEFAULT_LAYER_DECAY`` for a transformer family (``vit_b_16``, ``timm:deit_small_patch16_224``), else 1.0."""
    model = arch.rpartition(":")[2]
    return DEFAULT_LAYER_DECAY if model.startswith(LAYER_DECAY_FAMILIES) else 1.0


@dataclass
class FinetuneConfig:
    """All settings of one ``sft-engine finetune``.

    ``pretrained`` is a torchvision weights-enum name (``ResNet18_Weights.IMAGENET1K_V1``
    or ``DEFAULT``), the path of a ``.safetensors``/``.pt`` checkpoint or of an earlier
    fine-tune output directory, or None for random initial weights.
    """

    arch: str = "resnet18"
    pretrained: str | None = None
    dataset: str = "synthetic"
    data_dir: Path | None = None
    download: bool = False
    num_classes: int | None = None
    input_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: ``plain`` (resize to the input size, today's recipe) or ``source``: the arch's own
    #: eval transform (timm's pretrained_cfg, torchvision's weights.transforms()), which
    #: then sets input_size, resize_size, crop_mode, interpolation, mean and std
    preprocess: str = "plain"
    resize_size: int | None = None
    crop_mode: str = "squash"
    interpolation: str = "bilinear"
    augment: bool = True
    val_fraction: float = 0.1
    check_images: bool = True
    synthetic_variant: str = "a"
    synthetic_train_size: int = 2000
    synthetic_val_size: int = 400
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    head_lr: float | None = None
    #: layer-wise learning-rate decay (AdamW): layer i of L gets lr * layer_decay ** (L - i);
    #: ``auto``: 0.75 for transformer families (ViT, DeiT, BEiT, EVA, Swin: BEiT's and MAE's
    #: fine-tuning recipe), off (1.0) for the others
    layer_decay: float | str = "auto"
    momentum: float = 0.9
    weight_decay: float = 0.05
    warmup_epochs: float | None = None
    min_lr_ratio: float = 0.0
    reg: str = "auto"
    reg_lambda: float | None = None
    head_lambda: float = 0.01
    distill_temperature: float = 2.0
    label_smoothing: float = 0.0
    freeze_backbone: bool = False
    early_stopping_patience: int | None = None
    seed: int = 0
    deterministic: bool = False
    output: Path = Path("finetune-out")
    overwrite: bool = False
    resume: bool = False
    keep_state: bool = False
    #: labelled validation images kept in ``output/holdout`` for build's accuracy gate (0: none)
    holdout_images: int = 256
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    num_workers: int | None = None
    progress: bool = True

    @property
    def preprocessing(self) -> Preprocessing:
        """The run's preprocessing record (validated config): what it trains and evaluates with, and what is served."""
        return Preprocessing(input_size=int(self.input_size or 224), mean=tuple(self.mean), std=tuple(self.std),  # type: ignore[arg-type]
                             resize_size=self.resize_size, crop_mode=self.crop_mode, resize=self.interpolation)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], origin: str) -> "FinetuneConfig":
        return cls().merged(data, origin)

    def merged(self, data: Mapping[str, Any], origin: str) -> "FinetuneConfig":
        """A copy with ``data``'s keys applied; an unknown key is an error, never ignored."""
        return replace(self, **strict_updates(self, data, origin))

    # -- validation ------------------------------------------------------------------
    def validated(self) -> "FinetuneConfig":
        """A checked copy with types coerced and ``reg``/``reg_lambda`` resolved."""
        from sft_engine.models import get_arch

        c = replace(self)
        spec = get_arch(c.arch)
        c.pretrained = _pretrained(c.pretrained)
        if c.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {c.dataset!r}", hint=f"choose one of: {', '.join(DATASETS)}")
        if c.data_dir is not None:
            c.data_dir = Path(c.data_dir)
        if c.dataset in ("cifar10", "imagefolder") and c.data_dir is None:
            raise ConfigError(f"dataset {c.dataset} needs a data directory", hint="pass --data-dir DIR")
        c.output = Path(c.output)
        for name in ("download", "augment", "check_images", "freeze_backbone", "deterministic", "overwrite", "resume", "keep_state", "progress"):
            _bool(c, name)
        if c.channels_last is not None:
            _bool(c, "channels_last")
        if c.num_classes is not None:
            _int(c, "num_classes", 2, hint="pass --num-classes N with N >= 2, or leave it out to infer it from the dataset")
        if c.preprocess not in ("plain", "source"):
            raise ConfigError(f"unknown preprocess {c.preprocess!r}", hint="choose plain or source")
        if c.preprocess == "source":
            from sft_engine.models import source_preprocessing

            src = source_preprocessing(c.arch)
            c.input_size, c.resize_size, c.crop_mode, c.interpolation = src.input_size, src.resize_size, src.crop_mode, src.resize
            c.mean, c.std = src.mean, src.std  # type: ignore[assignment]
        c.input_size = spec.default_input_size if c.input_size is None else c.input_size
        _int(c, "input_size", 16, 4096, hint="pass --input-size between 16 and 4096")
        c.mean = _triple(c.mean, "mean")
        c.std = _triple(c.std, "std")
        if any(v <= 0 for v in c.std):
            raise ConfigError(f"std values must be > 0, got {c.std}", hint="e.g. std = [0.229, 0.224, 0.225]")
        _float(c, "val_fraction", 0.0, 1.0, low_open=True, high_open=True, hint="e.g. --val-fraction 0.1")
        if c.synthetic_variant not in SYNTHETIC_VARIANTS:
            raise ConfigError(f"unknown synthetic variant {c.synthetic_variant!r}", hint="choose 'a' or 'b'")
        _int(c, "synthetic_train_size", 2, hint="pass --synthetic-train-size of at least 2")
        _int(c, "synthetic_val_size", 2, hint="pass --synthetic-val-size of at least 2")
        _int(c, "epochs", 1, hint="pass --epochs 1 or more")
        _int(c, "batch_size", 1, hint="pass --batch-size 1 or more")
        if c.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {c.optimizer!r}", hint=f"choose one of: {', '.join(OPTIMIZERS)}")
        _float(c, "lr", 0.0, low_open=True, hint="pass --lr greater than 0, e.g. 1e-3")
        if c.head_lr is not None:
            _float(c, "head_lr", 0.0, low_open=True, hint="pass --head-lr greater than 0 or leave it out to use --lr")
        _float(c, "momentum", 0.0, 1.0, high_open=True, hint="e.g. --momentum 0.9")
        if c.layer_decay == "auto":
            c.layer_decay = default_layer_decay(c.arch) if c.optimizer == "adamw" else 1.0
        _float(c, "layer_decay", 0.0, 1.0, low_open=True, hint="pass a layer decay in (0, 1], e.g. 0.75, or 1 for none")
        _float(c, "weight_decay", 0.0, hint="pass --weight-decay 0 or more")
        if c.warmup_epochs is None:  # one epoch, but never more than a fifth of the run
            c.warmup_epochs = min(1.0, c.epochs / 5)
        _float(c, "warmup_epochs", 0.0, hint="pass --warmup-epochs 0 or more")
        if c.warmup_epochs >= c.epochs:
            raise ConfigError(
                f"warmup_epochs ({c.warmup_epochs:g}) must be smaller than epochs ({c.epochs})",
                hint="lower --warmup-epochs or raise --epochs",
            )
        _float(c, "min_lr_ratio", 0.0, 1.0, hint="e.g. 0.0 (decay to zero) or 0.01")
        _float(c, "label_smoothing", 0.0, 1.0, high_open=True, hint="pass --label-smoothing in [0, 1), e.g. 0.1")
        if c.reg not in REGULARIZERS:
            raise ConfigError(f"unknown regularizer {c.reg!r}", hint=f"choose one of: {', '.join(REGULARIZERS)}")
        if c.reg == "auto":
            c.reg = "none" if c.pretrained is None or c.freeze_backbone else "l2sp"
        if c.reg_lambda is not None:
            _float(c, "reg_lambda", hint="pass --reg-lambda as a number")
            if c.reg_lambda < 0:
                raise ConfigError(
                    f"reg_lambda (λ) must be >= 0, got {c.reg_lambda:g}",
                    hint="λ weighs the pull towards the pretrained model; a negative value would push away from it - pass --reg-lambda 0 or more",
                )
        c.reg_lambda = DEFAULT_LAMBDA[c.reg] if c.reg_lambda is None else c.reg_lambda
        _float(c, "head_lambda", 0.0, hint="pass --head-lambda 0 or more")
        _float(c, "distill_temperature", 0.0, low_open=True, hint="pass --temperature greater than 0, e.g. 2")
        if c.reg in ("l2sp", "distill") and c.pretrained is None:
            raise ConfigError(
                f"--reg {c.reg} needs pretrained weights: with random initial weights there is no pretrained model to stay close to",
                hint="pass --pretrained ENUM_NAME|PATH, or --reg none",
            )
        if c.reg in ("l2sp", "distill") and c.freeze_backbone:
            raise ConfigError(
                f"--reg {c.reg} with --freeze-backbone has no effect: a frozen backbone cannot move away from the pretrained model",
                hint="drop --freeze-backbone or pass --reg none",
            )
        if c.early_stopping_patience is not None:
            _int(c, "early_stopping_patience", 1, hint="pass --early-stopping N with N >= 1 epochs")
        _int(c, "seed", 0, hint="pass --seed 0 or more")
        if not isinstance(c.device, str) or not (c.device in ("auto", "cpu", "cuda") or c.device.startswith("cuda:")):
            raise ConfigError(f"unknown device {c.device!r}", hint="pass --device auto, cpu, cuda or cuda:N")
        if c.amp not in AMP_MODES:
            raise ConfigError(f"unknown AMP mode {c.amp!r}", hint=f"choose one of: {', '.join(AMP_MODES)}")
        _int(c, "holdout_images", 0, hint="pass --holdout-images 0 (keep none) or more")
        if c.num_workers is not None:
            _int(c, "num_workers", 0, hint="pass --num-workers 0 or more")
        if c.resume and c.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other", hint="pass one of them")
        return c

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (paths as strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key] = str(value) if isinstance(value, Path) else (list(value) if isinstance(value, tuple) else value)
        return out


def load_finetune_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file of settings: keys at the top level or under ``[finetune]``.

    Relative ``data_dir``/``output``/``pretrained`` paths are taken relative to the file,
    so a config can travel with its data.
    """
    path = Path(path)
    data = section(load_toml(path, "finetune config"), "finetune", path, "finetune config")
    return resolve_relative(data, ("data_dir", "output", "pretrained"), path.parent, only_if_exists=("pretrained",), absolute=False)


# -- helpers ----------------------------------------------------------------------------
def _pretrained(value: Any) -> str | None:
    if value is None or isinstance(value, Path):
        return None if value is None else str(value)
    if not isinstance(value, str):
        raise ConfigError(f"pretrained must be a weights name or a path, got {value!r}", hint="pass --pretrained ENUM_NAME|PATH|none")
    value = value.strip()
    return None if value.lower() in ("", "none", "null", "scratch") else value


def _bool(c: FinetuneConfig, name: str) -> None:
    value = getattr(c, name)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}", hint=f"write {name} = true or {name} = false")


def _int(c: FinetuneConfig, name: str, low: int | None = None, high: int | None = None, hint: str = "") -> None:
    value = getattr(c, name)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} must be an integer, got {value!r}", hint=hint)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{name} is out of range: {value}", hint=hint)
    setattr(c, name, value)


def _float(
    c: FinetuneConfig,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> None:
    value = getattr(c, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}", hint=hint)
    value = float(value)
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        raise ConfigError(f"{name} is out of range: {value:g}", hint=hint)
    setattr(c, name, value)


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    try:
        floats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be 3 numbers (R, G, B), got {value!r}", hint=f"e.g. {name} = [0.5, 0.5, 0.5]") from None
    if len(floats) != 3:
        raise ConfigError(f"{name} needs 3 values (R, G, B), got {len(floats)}", hint=f"e.g. {name} = [0.5, 0.5, 0.5]")
    return floats  # type: ignore[return-value]
