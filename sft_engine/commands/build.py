"""``sft-engine build``: flags, a TOML spec (``--spec build/x.toml``) or ``--from-finetune DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sft_engine.build_config import SPEC_PATHS, BuildConfig, config_from_sources, load_build_spec
from sft_engine.pixels import CROP_MODES, INTERPOLATIONS

# flag dest → BuildConfig field (flags left at None are not applied)
_FLAG_FIELDS = (
    "arch", "weights", "pretrained", "exported", "preprocess", "preprocess_config", "num_classes", "input_size", "mean", "std",
    "resize_size", "crop_mode", "interpolation", "max_batch_size", "name",
    "repository", "target", "engine", "precision", "instance_count", "intra_op_threads", "max_queue_delay_us", "parity_atol",
    "parity_rtol", "parity_min_top1_agreement", "parity_samples", "accuracy_max_drop", "calibration_dir", "int8_calibration_images", "build_gpus", "serve_gpus", "seed",
    "allow_unmatched_tensorrt", "allow_int8_without_isa",
    "max_image_pixels", "preprocess_instances",
    "fast_decode",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="compile fine-tuned weights into an engine and publish it to a Triton model repository",
                       description="Export, verify against eager PyTorch, and publish version N+1 of a model.")
    src = p.add_argument_group("source")
    src.add_argument("--spec", metavar="FILE", help="TOML build spec (keys as the flags, under [build]); flags override it")
    src.add_argument("--from-finetune", metavar="DIR", help="output directory of sft-engine finetune (weights + metadata)")
    src.add_argument("--arch", help="any torchvision classifier by its name (resnet50, vit_b_16, swin_t; also torchvision:NAME) "
                                    "or any timm model as timm:NAME (timm:convnext_tiny); list them with sft-engine models")
    src.add_argument("--weights", metavar="FILE",
                     help="fine-tuned weights: .safetensors, .pth, .bin or .ckpt holding tensors only; sft-engine's, timm train.py's, "
                          "Hugging Face's or Lightning's layout (state_dict / model / module. prefixes)")
    src.add_argument("--pretrained", metavar="NAME|PATH", help="the source's weights: a torchvision enum name, a timm tag, or DEFAULT "
                                                              "(from the cache, else downloaded), or a local file; instead of --weights")
    src.add_argument("--exported", metavar="FILE.pt2",
                     help="a torch.export program of any classifier (dynamic batch), instead of --arch and --weights; "
                          "needs --preprocess-config")
    src.add_argument("--allow-random-weights", action="store_true", default=None, help="build untrained weights (benchmarks only)")
    src.add_argument("--num-classes", type=int)
    src.add_argument("--labels", metavar="FILE", help="one label per line, in class-index order")
    pre = p.add_argument_group("preprocessing (recorded in config.pbtxt; the flags below override the base)")
    pre.add_argument("--preprocess", choices=("source", "plain"),
                     help="base: source = the model's own eval transform (timm pretrained_cfg, torchvision weights.transforms(); "
                          "the default beyond resnet18/34/50, mobilenet_v3_*, efficientnet_b0), plain = resize to the input size")
    pre.add_argument("--preprocess-config", metavar="FILE",
                     help="TOML/JSON naming every step: input_size, resize_size or crop_pct, crop_mode, interpolation, mean, std")
    pre.add_argument("--input-size", type=int)
    pre.add_argument("--resize-size", type=int, help="resize before the crop (timm: floor(input_size / crop_pct))")
    pre.add_argument("--crop-mode", choices=CROP_MODES, help="how the resize keeps the aspect ratio")
    pre.add_argument("--interpolation", choices=INTERPOLATIONS)
    pre.add_argument("--mean", help="R,G,B mean, e.g. 0.485,0.456,0.406")
    pre.add_argument("--std", help="R,G,B std, e.g. 0.229,0.224,0.225")
    out = p.add_argument_group("engine and serving")
    out.add_argument("--target", help="cpu (default), tensorrt, torchscript-gpu, onnx, or auto (see docs/build.md)")
    out.add_argument("--engine", help="CPU engine: onnxruntime, torchscript, openvino, or auto (default), which measures each and keeps the fastest that passes its gate")
    out.add_argument("--precision",
                     help="arithmetic. --target cpu: auto (default) also tries bf16 and int8 where the CPU runs them natively, each under its "
                          "accuracy gate; fp32, bf16 or int8 forces one. --target tensorrt: fp16 (default), or int8 / fp8 (ModelOpt, "
                          "calibrated and gated on labelled images)")
    out.add_argument("--name", help="model name in the repository (default: the arch)")
    out.add_argument("--repository", metavar="DIR", help="Triton model repository (default: model_repository)")
    out.add_argument("--max-batch-size", type=int)
    out.add_argument("--instance-count", type=int)
    out.add_argument("--intra-op-threads", type=int, help="threads per instance (default: cores / instances)")
    out.add_argument("--max-queue-delay-us", type=int, help="dynamic batching queue delay")
    out.add_argument("--build-gpu", dest="build_gpus", metavar="IDS",
                     help="GPU(s) the build runs on, e.g. 0 (default: every visible GPU, one per architecture); not where it is served")
    out.add_argument("--serve-gpus", metavar="IDS|all",
                     help="serving placement, the config's instance_group.gpus (default: all GPUs of the serving host; "
                          "for --target onnx, 'all' or ids switch from CPU to GPU instances)")
    out.add_argument("--gpus", help=argparse.SUPPRESS)  # split into --build-gpu and --serve-gpus: a one-line error
    out.add_argument("--allow-unmatched-tensorrt", action="store_true", default=None,
                     help="publish a TensorRT plan even when no known NGC Triton container ships its TensorRT")
    out.add_argument("--allow-emulated-int8", dest="allow_int8_without_isa", action="store_true", default=None,
                     help="build INT8 CPU engines on a CPU without INT8 instructions (AVX2, VNNI, AMX-INT8), for serving hosts that have them: "
                          "quantized and gated here, where they run emulated and slower than FP32")
    img = p.add_argument_group("image serving (the <name>_preprocess and <name>_image models)")
    img.add_argument("--max-image-pixels", type=int, help="refuse larger images before decoding them (default 40000000)")
    img.add_argument("--preprocess-instances", type=int, help="CPU instances of the preprocessing model (default 2)")
    img.add_argument("--fast-decode", action="store_true", default=None,
                     help="decode JPEGs at least twice the target at a reduced DCT scale (faster, pixels differ slightly); "
                          "the build refuses it unless the engine's labels agree on the gate images as the INT8 gate asks")
    gate = p.add_argument_group("parity gate")
    gate.add_argument("--parity-atol", type=float)
    gate.add_argument("--parity-rtol", type=float)
    gate.add_argument("--parity-min-top1-agreement", type=float)
    gate.add_argument("--parity-samples", type=int, help="random inputs for the gate")
    gate.add_argument("--accuracy-max-drop", type=float, help="allowed accuracy drop in points on labelled calibration images")
    gate.add_argument("--calibration", dest="calibration_dir", metavar="DIR", help="images (in class folders for accuracy)")
    gate.add_argument("--int8-calibration-images", type=int, metavar="N",
                      help="labelled images that calibrate INT8 (default 300); the rest, at least 200, gate it")
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    ngc = p.add_argument_group("NGC containers (GPU targets)")
    ngc.add_argument("--print-docker", action="store_true",
                     help="print, without building, the docker commands of one NGC release: this build inside the PyTorch "
                          "container nvcr.io/nvidia/tritonserver:YY.MM-py3 is built from (nvcr.io/nvidia/pytorch:<upstream>-py3), "
                          "and the serve with that tritonserver plus Pillow for the image models")
    ngc.add_argument("--ngc-release", metavar="YY.MM",
                     help="tritonserver release for --print-docker (default: the newest whose TensorRT sft-engine's table confirms)")
    p.set_defaults(func=run, build_parser=p)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    flags: dict[str, Any] = {k: getattr(args, k) for k in _FLAG_FIELDS if getattr(args, k, None) is not None}
    if getattr(args, "gpus", None) is not None:
        flags["gpus"] = args.gpus  # refused by BuildConfig.merged, naming the two flags that replace it
    if args.labels:
        flags["labels_file"] = args.labels
    if args.allow_random_weights:
        flags["allow_random_weights"] = True
    return config_from_sources(args.from_finetune, args.spec, flags)


#: flags whose value is a path the build reads, and the one it writes
_INPUT_DESTS = ("weights", "labels", "calibration_dir", "spec", "from_finetune", "exported", "preprocess_config")
_OUTPUT_DESTS = ("repository",)
_NOT_PASSED_ON = ("print_docker", "ngc_release", "help")


def _passed_on_args(args: argparse.Namespace) -> tuple[list[str], list[Path]]:
    """The build's flags as given (paths made absolute) for the build inside the container, and its input paths."""
    out: list[str] = []
    inputs: list[Path] = []
    for action in args.build_parser._actions:
        dest = action.dest
        if not action.option_strings or dest in _NOT_PASSED_ON:
            continue
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        flag = max(action.option_strings, key=len)
        if dest in _INPUT_DESTS + _OUTPUT_DESTS:
            value = str(Path(value).resolve())
            if dest in _INPUT_DESTS:
                inputs.append(Path(value))
        out += [flag] if value is True else [flag, str(value)]
    if args.spec:  # paths inside a spec are relative to it: mount what they name as well
        spec = load_build_spec(args.spec)
        inputs += [Path(spec[k]) for k in SPEC_PATHS if k in spec]
    return out, inputs


def _print_docker(args: argparse.Namespace, cfg: BuildConfig) -> int:
    from sft_engine.ngc import current_uid_gid, ngc_commands, source_root

    build_args, inputs = _passed_on_args(args)
    commands = ngc_commands(cfg.target, build_args, inputs, Path(cfg.repository), args.ngc_release, source_root(), current_uid_gid(),
                            precision=cfg.precision)
    for note in commands.notes:
        print(f"note: {note}", file=sys.stderr)
    print(commands.build)
    print(commands.serve)
    return 0


def run(args: argparse.Namespace) -> int:
    from sft_engine.build import build

    cfg = config_from_args(args)
    if getattr(args, "print_docker", False):
        return _print_docker(args, cfg.validated())
    quiet = args.json
    result = build(cfg, progress=(lambda _: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True)))
    print(json.dumps(result.to_dict(), indent=2) if args.json else "\n".join(result.summary_lines()))
    return 0
