"""``BuildConfig``, the settings of one build: from flags, a TOML build spec, or a fine-tuning output directory.

One dataclass, ``BuildConfig``, is the only form the build pipeline accepts; the three
sources above are merged into it (later ones win: finetune metadata < spec file <
flags) and validated once, with errors that name the offending key or flag.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from sft_engine.errors import ConfigError
from sft_engine.pixels import DEFAULT_MAX_IMAGE_PIXELS
from sft_engine.preprocess import Preprocessing, parse_floats
from sft_engine.repository.image_models import ImageServing
from sft_engine.settings import load_toml, resolve_relative, section

__all__ = ["BuildConfig", "validate_model_name", "default_model_name", "load_build_spec", "load_finetune_dir", "read_labels",
           "config_from_sources", "SPEC_PATHS"]

LOGGER = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_model_name(name: str) -> str:
    """A Triton model name that is also a safe directory name (no ``/``, ``..``, spaces)."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ConfigError(
            f"model name {name!r} is not allowed",
            hint="use letters, digits, '_', '-' or '.', starting with a letter or digit, without '/', '..' or spaces",
        )
    return name


def default_model_name(arch: str) -> str:
    """The repository name of an arch when ``--name`` is not given: ``timm:convnext_tiny`` → ``timm_convnext_tiny``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", arch.strip()).strip("._-") or "model"
    return re.sub(r"\.{2,}", ".", name)[:128]


def read_labels(path: str | Path) -> list[str]:
    """One label per line; blank lines at the end are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"labels file {path} does not exist", hint="pass --labels with a file of one label per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"labels file {path} cannot be read: {exc}", hint="write it as UTF-8 text, one label per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [ln.strip() for ln in lines]
    if any(not label for label in labels):
        raise ConfigError(f"labels file {path} has an empty label", hint="remove blank lines between labels")
    return labels


@dataclass
class BuildConfig:
    """All settings of one ``sft-engine build``."""

    arch: str = "resnet18"
    num_classes: int | None = None
    weights: Path | None = None
    pretrained: str | None = None
    allow_random_weights: bool = False
    labels: list[str] | None = None
    #: a ``torch.export`` program (``.pt2``) of any classifier, instead of ``arch`` + weights
    exported: Path | None = None
    #: where the preprocessing starts: ``auto`` (the arch's source for any arch beyond the six
    #: CNNs the path began with, the plain resize for those), ``source`` or ``plain``; the
    #: fields below, when given, override it (a fine-tune's metadata gives all of them)
    preprocess: str = "auto"
    #: a TOML/JSON file with the whole preprocessing (needed with ``exported``: never guessed)
    preprocess_config: Path | None = None
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize_size: int | None = None
    crop_mode: str | None = None
    interpolation: str | None = None
    max_batch_size: int = 32
    name: str | None = None
    repository: Path = Path("model_repository")
    target: str = "cpu"
    engine: str = "auto"
    precision: str = "auto"
    instance_count: int = 1
    intra_op_threads: int = 0
    max_queue_delay_us: int = 200
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    preprocess_instances: int = 2
    #: the image models decode large JPEGs at a reduced DCT scale (gated: label agreement on the gate images)
    fast_decode: bool = False
    parity_atol: float = 1e-3
    parity_rtol: float = 1e-3
    parity_min_top1_agreement: float = 0.99
    parity_samples: int = 16
    calibration_dir: Path | None = None
    #: labelled images that calibrate INT8 (the rest, at least 200, gate it)
    int8_calibration_images: int = 300
    accuracy_max_drop: float = 0.3
    #: GPUs the build runs on (every visible one, one per architecture, when empty)
    build_gpus: tuple[int, ...] = ()
    #: serving placement, ``instance_group.gpus``: None = the target's default (GPU targets:
    #: every GPU of the serving host; onnx: CPU), () = every GPU, else these ids
    serve_gpus: tuple[int, ...] | None = None
    allow_unmatched_tensorrt: bool = False
    #: quantize INT8 on a CPU without INT8 dot-product instructions, for serving hosts that have them
    #: (the engine runs here emulated: correct, slow; the gate still judges it)
    allow_int8_without_isa: bool = False
    selection_budget_s: float = 3.0
    seed: int = 0
    workdir: Path | None = None
    source: dict[str, Any] = field(default_factory=dict)
    #: where the validated preprocessing came from, and which fields overrode it (for the manifest)
    preprocess_origin: str = ""

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], origin: str) -> "BuildConfig":
        return cls().merged(data, origin)

    def merged(self, data: Mapping[str, Any], origin: str) -> "BuildConfig":
        """A copy with ``data``'s keys applied; an unknown key is an error, never ignored."""
        known = {f.name: f for f in fields(self)}
        updates: dict[str, Any] = {}
        for key, value in data.items():
            attr = key.replace("-", "_")
            if attr == "labels_file":
                updates["labels"] = read_labels(value)
                continue
            if attr == "gpus":
                raise ConfigError(f"{key!r} in {origin} is split in two: where the build runs and where Triton serves",
                                  hint="use build_gpus / --build-gpu for the GPUs that build the engine, and serve_gpus / "
                                       "--serve-gpus (default: all) for the config's instance_group.gpus")
            if attr not in known or attr in _INTERNAL:
                raise ConfigError(f"unknown key {key!r} in {origin}", hint=f"known keys: {', '.join(sorted(k for k in known if k not in _INTERNAL))}")
            updates[attr] = value
        new = replace(self, **updates)
        new.source = {**self.source, **{k: origin for k in updates}}
        return new

    def validated(self) -> "BuildConfig":
        """A checked copy with coerced types and ``--target auto`` resolved for this host; ``self`` is left as it was.

        The target is resolved once, here, and the ``--engine`` / ``--precision`` choice
        checked once, against the target that will build.
        """
        from sft_engine.engines.precision import get_precision
        from sft_engine.engines.registry import check_choice, get_target, resolve_target

        serve_gpus = None if self.serve_gpus is None else parse_gpu_ids(self.serve_gpus, "--serve-gpus", allow_all=True)
        cfg = replace(
            self,
            weights=_path_or_none(self.weights), calibration_dir=_path_or_none(self.calibration_dir), workdir=_path_or_none(self.workdir),
            exported=_path_or_none(self.exported), preprocess_config=_path_or_none(self.preprocess_config),
            repository=Path(self.repository), build_gpus=parse_gpu_ids(self.build_gpus, "--build-gpu"), serve_gpus=serve_gpus,
            num_classes=len(self.labels) if self.labels is not None and self.num_classes is None else self.num_classes,
            source=dict(self.source),
        )
        cfg = _with_model(cfg)
        prep, origin = _preprocessing(cfg)
        cfg = replace(cfg, input_size=prep.input_size, mean=prep.mean, std=prep.std, resize_size=prep.resize_size,
                      crop_mode=prep.crop_mode, interpolation=prep.resize, preprocess_origin=origin)
        if cfg.exported is not None:
            _check_program(cfg, prep)
        if cfg.target != "auto":
            get_target(cfg.target)
        target = resolve_target(cfg.target)
        try:
            check_choice(target, cfg.engine, cfg.precision)
        except ConfigError as exc:
            if cfg.target != "auto":
                raise
            raise ConfigError(f"--target auto builds {target} on this host, and {exc.message}", hint=exc.hint) from None
        if cfg.serve_gpus is not None and not get_target(target).serves_on_gpus:
            raise ConfigError(f"--serve-gpus places a GPU engine; --target {target} serves on CPU instances",
                              hint="drop --serve-gpus, or use --target tensorrt, torchscript-gpu or onnx")
        cfg = replace(cfg, target=target)
        if not isinstance(cfg.int8_calibration_images, int) or cfg.int8_calibration_images < 1:
            raise ConfigError(f"INT8 calibration images must be an integer >= 1, got {cfg.int8_calibration_images!r}", hint="pass --int8-calibration-images 300")
        if cfg.precision != "auto" and get_precision(cfg.precision).needs_labelled_images and cfg.calibration_dir is None:
            raise ConfigError(f"--precision {cfg.precision} needs labelled images to calibrate and gate the engine, and none were given",
                              hint="pass --calibration DIR (one folder per class, at least 250 images) or --from-finetune DIR")
        if cfg.num_classes is None:
            raise ConfigError("the number of classes is not known", hint="pass --num-classes N or --labels FILE")
        if not isinstance(cfg.num_classes, int) or cfg.num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {cfg.num_classes!r}", hint="pass --num-classes N")
        if cfg.labels is not None and len(cfg.labels) != cfg.num_classes:
            raise ConfigError(
                f"the labels file has {len(cfg.labels)} labels but num_classes is {cfg.num_classes}",
                hint="give one label per class, in class-index order",
            )
        if cfg.weights is not None and not cfg.weights.is_file():
            raise ConfigError(f"checkpoint {cfg.weights} does not exist", hint="pass --weights with the path of a .safetensors or .pt file")
        if cfg.weights is None and not cfg.pretrained and not cfg.allow_random_weights and cfg.exported is None:
            raise ConfigError("no weights given", hint="pass --weights FILE (.safetensors or .pt), --from-finetune DIR, or --pretrained ENUM_NAME|PATH")
        if not isinstance(cfg.max_batch_size, int) or not 1 <= cfg.max_batch_size <= 4096:
            raise ConfigError(f"max batch size {cfg.max_batch_size!r} is out of range", hint="pass --max-batch-size between 1 and 4096")
        if not isinstance(cfg.instance_count, int) or not 1 <= cfg.instance_count <= 64:
            raise ConfigError(f"instance count {cfg.instance_count!r} is out of range", hint="pass --instance-count between 1 and 64")
        if cfg.max_queue_delay_us < 0:
            raise ConfigError("max queue delay must be >= 0", hint="pass --max-queue-delay-us 0 or more")
        if not 0 < cfg.parity_min_top1_agreement <= 1:
            raise ConfigError("parity top-1 agreement must be in (0, 1]", hint="e.g. 0.99")
        cfg.image_serving  # validates the preprocessing model's limits
        if cfg.fast_decode and cfg.calibration_dir is None:
            raise ConfigError("--fast-decode needs labelled images to gate it, and none were given",
                              hint="pass --calibration DIR with images in one folder per class (the size clients send), or drop --fast-decode")
        return replace(cfg, name=validate_model_name(cfg.name or _default_name(cfg)))

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing record this build serves (resolved as ``validated()`` does it)."""
        return _preprocessing(self)[0]

    @property
    def image_serving(self) -> ImageServing:
        """Settings of the ``<name>_preprocess`` model published beside the engine."""
        return ImageServing(max_image_pixels=self.max_image_pixels, instances=self.preprocess_instances, fast_decode=bool(self.fast_decode))

    @property
    def label_list(self) -> list[str]:
        """The labels, or ``class_0`` ... when none were given."""
        assert self.num_classes is not None
        return list(self.labels) if self.labels else [f"class_{i}" for i in range(self.num_classes)]

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings, for the build manifest."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("source", "workdir"):
                continue
            if f.name == "preprocess_origin" and not value:
                continue
            out[f.name] = str(value) if isinstance(value, Path) else (list(value) if isinstance(value, tuple) else value)
        return out


#: fields no source may set
_INTERNAL = ("source", "preprocess_origin")


def _path_or_none(value: Any) -> Path | None:
    return None if value is None else Path(value)


def _preprocessing(cfg: BuildConfig) -> tuple[Preprocessing, str]:
    from sft_engine.models.preprocessing import OVERRIDES, resolve_preprocessing

    return resolve_preprocessing(cfg.arch, cfg.preprocess, cfg.preprocess_config, {k: getattr(cfg, k) for k in OVERRIDES})


def _default_name(cfg: BuildConfig) -> str:
    return default_model_name(cfg.exported.stem if cfg.exported is not None else cfg.arch)


def _with_model(cfg: BuildConfig) -> BuildConfig:
    """The arch checked and stored canonical (``torchvision:resnet50`` → ``resnet50``), or an exported program's refusals."""
    from sft_engine.models import canonical_arch, get_arch

    if cfg.exported is None:
        get_arch(cfg.arch)
        return replace(cfg, arch=canonical_arch(cfg.arch))
    for key, flag in (("weights", "--weights"), ("pretrained", "--pretrained"), ("arch", "--arch")):
        if getattr(cfg, key) and (key != "arch" or "arch" in cfg.source):
            raise ConfigError(f"{flag} and --exported both name the model", hint=f"drop {flag}: the exported program carries its own weights")
    if cfg.preprocess_config is None:
        raise ConfigError("--exported needs --preprocess-config FILE: a program carries no preprocessing, and none is guessed",
                          hint="write input_size, resize_size (or crop_pct), crop_mode, interpolation, mean and std into a TOML or JSON file")
    if cfg.preprocess != "auto":
        raise ConfigError(f"--preprocess {cfg.preprocess} has no source to read with --exported", hint="give the preprocessing in --preprocess-config")
    return replace(cfg, arch="exported")


def _check_program(cfg: BuildConfig, prep: Preprocessing) -> None:
    """The program takes the preprocessing's tensor at every batch the config serves; its class count fills ``num_classes``."""
    from sft_engine.models.exported import load_exported

    info = load_exported(cfg.exported).info  # type: ignore[arg-type]
    if info.input_shape != prep.shape:
        raise ConfigError(f"the exported program takes {'x'.join(map(str, info.input_shape))} inputs, the preprocessing makes "
                          f"{'x'.join(map(str, prep.shape))}", hint="fix input_size in --preprocess-config, or export at the model's size")
    if info.batch_max is not None and info.batch_max < int(cfg.max_batch_size):
        raise ConfigError(f"the exported program takes batches up to {info.batch_max}, below --max-batch-size {cfg.max_batch_size}",
                          hint=f"pass --max-batch-size {info.batch_max}, or export with a larger Dim('batch', max=...)")
    if info.batch_min > 1:
        raise ConfigError(f"the exported program takes batches from {info.batch_min}; Triton sends batches of 1",
                          hint="export with Dim('batch', min=1)")
    if cfg.num_classes is None:
        cfg.num_classes = info.num_classes
    elif cfg.num_classes != info.num_classes:
        raise ConfigError(f"the exported program has {info.num_classes} classes, not {cfg.num_classes}", hint="drop --num-classes, or give one label per class")


def load_build_spec(path: str | Path) -> dict[str, Any]:
    """A TOML build spec: keys at the top level or under ``[build]``.

    Input paths (weights, labels, calibration, fine-tuning output) are relative to the
    spec file, so a spec works from any directory; ``repository`` is relative to where
    the command runs, like the flag.
    """
    path = Path(path)
    data = section(load_toml(path, "build spec", hint="fix the TOML syntax; see build/resnet18_demo.toml"), "build", path, "build spec")
    return resolve_relative(data, SPEC_PATHS, path.parent)


#: the keys of a build spec that name input files (relative to the spec)
SPEC_PATHS = ("weights", "labels_file", "calibration_dir", "from_finetune", "exported", "preprocess_config")


FINETUNE_FORMAT = "sft-engine/finetune@1"


def load_finetune_dir(path: str | Path) -> dict[str, Any]:
    """Build settings from a ``sft-engine finetune`` output directory (metadata.json).

    The run's labelled holdout (``DIR/holdout``, when it kept one) becomes the
    calibration directory, so the parity gate measures top-1 agreement and the accuracy
    drop on real images of the task; a spec's ``calibration_dir`` or ``--calibration``
    still overrides it, as every later source does.
    """
    path = Path(path)
    meta_path = path / "metadata.json"
    if not meta_path.is_file():
        raise ConfigError(f"{path} is not a fine-tuning output (no metadata.json)", hint="pass the --output directory of sft-engine finetune")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{meta_path} cannot be read: {exc}", hint="run sft-engine finetune again") from None
    if meta.get("format") != FINETUNE_FORMAT:
        raise ConfigError(f"{meta_path} has format {meta.get('format')!r}, expected {FINETUNE_FORMAT}", hint="run sft-engine finetune again")
    recorded = (meta.get("training") or {}).get("preprocessing")
    try:  # the whole record the run trained with; outputs of earlier versions have the plain resize's three fields
        prep = (Preprocessing.from_parameters(recorded) if recorded else
                Preprocessing(input_size=int(meta["input_size"]), mean=tuple(meta["mean"]), std=tuple(meta["std"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{meta_path} has a malformed preprocessing record ({exc})", hint="run sft-engine finetune again") from None
    settings: dict[str, Any] = {
        "arch": meta["arch"],
        "num_classes": int(meta["num_classes"]),
        "labels": list(meta["labels"]),
        "input_size": prep.input_size, "mean": prep.mean, "std": prep.std, "resize_size": prep.resize_size or prep.input_size,  # explicit: None would let the source's fill it
        "crop_mode": prep.crop_mode, "interpolation": prep.resize,
        "weights": path / meta.get("weights", "model.safetensors"),
    }
    holdout = _holdout_dir(path, meta.get("holdout"), meta_path)
    if holdout is not None:
        settings["calibration_dir"] = holdout
    return settings


def _holdout_dir(path: Path, holdout: Any, meta_path: Path) -> Path | None:
    """The holdout folder named by the metadata, when it is there; an absolute path, as the
    build manifest records it and a later rollout check reads it from anywhere."""
    if holdout is None:
        return None
    name = holdout.get("dir") if isinstance(holdout, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"{meta_path} has a malformed holdout entry {holdout!r}", hint="run sft-engine finetune again")
    folder = path / name
    if not folder.is_dir():
        LOGGER.warning("the holdout %s named in %s is gone; the parity gate uses random inputs only", folder, meta_path)
        return None
    return folder.resolve()


def config_from_sources(from_finetune: str | Path | None = None, spec: str | Path | None = None,
                        flags: Mapping[str, Any] | None = None) -> BuildConfig:
    """The build settings from their three sources, later ones winning: fine-tuning output < spec file < flags.

    A spec may name its own ``from_finetune`` directory. ``flags`` are ``BuildConfig``
    fields (plus ``labels_file``) as given on the command line; ``build_gpus``,
    ``serve_gpus`` (also ``all``), ``mean`` and ``std`` may be comma-separated text.
    """
    cfg = BuildConfig()
    if from_finetune:
        cfg = cfg.merged(load_finetune_dir(from_finetune), f"{from_finetune}/metadata.json")
    if spec:
        data = load_build_spec(spec)
        if "from_finetune" in data:
            cfg = cfg.merged(load_finetune_dir(data.pop("from_finetune")), "fine-tuning metadata")
        cfg = cfg.merged(data, str(spec))
    given = dict(flags or {})
    for key in ("mean", "std"):
        if key in given:
            given[key] = parse_floats(given[key], f"--{key}")
    return cfg.merged(given, "flags")


def parse_gpu_ids(value: Any, flag: str, allow_all: bool = False) -> tuple[int, ...]:
    """``"0,1"``, ``[0, 1]`` or (with ``allow_all``) ``"all"`` (→ ``()``, every GPU) → distinct ids >= 0."""
    if isinstance(value, str):
        text = value.strip()
        if allow_all and text.lower() == "all":
            return ()
        items: list[Any] = [t for t in text.split(",") if t.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    try:
        ids = tuple(int(str(i).strip()) for i in items)
    except ValueError:
        raise ConfigError(f"{flag} {value!r} is not a list of GPU ids", hint=f"e.g. {flag} 0,1" + (f" or {flag} all" if allow_all else "")) from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids) or (isinstance(value, str) and not ids):
        raise ConfigError(f"{flag} {value!r} must name distinct GPU ids >= 0", hint=f"e.g. {flag} 0,1")
    return ids
