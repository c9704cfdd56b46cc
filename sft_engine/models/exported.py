"""A ``torch.export`` program of any classifier (``build --exported model.pt2``), loaded without running pickled code.

``torch.export.load`` unpickles in several places: tensors saved with ``torch.save``
(through ``torch.load(weights_only=False)`` for weights and constants, and as a fallback
for the example inputs), torchbind objects and opaque Python constants. Here the archive
is read first: a program with custom or opaque objects, AOTInductor code or the legacy
layout is refused, and the load itself runs with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` set,
so every ``torch.load`` inside it reads tensors only, whatever its call asks for.

The program must take one NCHW float image batch with a dynamic batch dimension and
return ``(batch, classes)`` logits; its preprocessing is never guessed (the build asks
for ``--preprocess-config``). The loaded module is wrapped so that ``eval()`` (which an
exported program refuses: it is already in inference form) is a no-op.
"""

from __future__ import annotations

import contextlib
import functools
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from sft_engine.errors import ModelError

__all__ = ["ExportedClassifier", "ProgramInfo", "load_exported", "check_archive"]

_REFUSED = (("custom_obj_", "a TorchBind object"), ("opaque_obj_", "a pickled Python object"), ("data/aotinductor/", "AOTInductor code"))
_HINT = "save it with torch.export.save(torch.export.export(model.eval(), (x,), dynamic_shapes=...), 'model.pt2')"


@dataclass(frozen=True)
class ProgramInfo:
    """What a program takes and returns: ``input_shape`` without the batch, the batch range, the class count."""

    input_shape: tuple[int, ...]
    batch_min: int
    batch_max: int | None
    num_classes: int
    dynamic_batch: bool


class ExportedClassifier(nn.Module):
    """An exported program's module as a plain classifier: ``eval()``/``train()`` leave it as it is."""

    def __init__(self, program: Any, info: ProgramInfo) -> None:
        super().__init__()
        self.program = program.module()
        self.program.requires_grad_(False)  # inference only; tracing exporters refuse grad-requiring constants
        self.info = info
        #: the ExportedProgram itself, for exporters that take one (torch.onnx's dynamo exporter)
        object.__setattr__(self, "exported_program", program)

    def train(self, mode: bool = True) -> "ExportedClassifier":
        self.training = False  # an exported program is in inference form already, and refuses to be switched
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def check_archive(path: Path) -> None:
    """Refuse a ``.pt2`` that is not a zip, uses the legacy layout, or holds code or objects beyond tensors."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"exported program {path} is not a torch.export archive ({exc})", hint=_HINT) from None
    if not any("/models/" in n and n.endswith(".json") for n in names):
        raise ModelError(f"exported program {path} has no serialized program (models/*.json): an old or foreign format", hint=_HINT)
    for marker, what in _REFUSED:
        found = [n for n in names if marker in n]
        if found:
            raise ModelError(f"exported program {path} holds {what} ({found[0]}), which could run code on load, and is refused",
                             hint="export the classifier without custom objects: " + _HINT)
    if any(n.endswith("/data/weights/model.pt") or n.endswith("/data/constants/model.pt") for n in names):
        raise ModelError(f"exported program {path} uses the legacy pickled-weights layout and is refused", hint="re-save it with a current torch: " + _HINT)


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def program_info(program: Any, path: Path) -> ProgramInfo:
    """Input and output shapes from the program's graph (symbolic sizes: the batch dimension's range)."""
    sig = program.graph_signature
    user_inputs = list(sig.user_inputs)
    if len(user_inputs) != 1:
        raise ModelError(f"exported program {path} takes {len(user_inputs)} inputs; a classifier takes one image batch", hint=_HINT)
    nodes = {n.name: n for n in program.graph.nodes}
    val = nodes[user_inputs[0]].meta.get("val")
    outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    out_vals = [getattr(o, "meta", {}).get("val") for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
    if val is None or len(val.shape) != 4 or len(out_vals) != 1 or out_vals[0] is None or len(out_vals[0].shape) != 2:
        raise ModelError(f"exported program {path} does not map an NCHW batch to (batch, classes) logits", hint=_HINT)
    batch, *rest = val.shape
    classes = out_vals[0].shape[1]
    if not all(isinstance(d, int) for d in rest) or not isinstance(classes, int):
        raise ModelError(f"exported program {path} has dynamic image sizes or class count; only the batch may be dynamic", hint=_HINT)
    if isinstance(batch, int):
        return ProgramInfo(tuple(rest), batch, batch, classes, dynamic_batch=False)
    ranges = program.range_constraints.get(batch.node.expr)
    upper = getattr(ranges, "upper", None) if ranges is not None else None
    lower = int(getattr(ranges, "lower", 1)) if ranges is not None else 1
    high = None if upper is None or not str(upper).lstrip("-").isdigit() else int(upper)
    return ProgramInfo(tuple(rest), lower, high, classes, dynamic_batch=True)


def load_exported(path: str | Path) -> ExportedClassifier:
    """The program at ``path`` as a classifier module (checked archive, tensors-only loading)."""
    path = Path(path)
    return _load(path.resolve(), path.stat().st_mtime_ns if path.is_file() else 0)


@functools.lru_cache(maxsize=2)
def _load(path: Path, mtime: int) -> ExportedClassifier:
    if not path.is_file():
        raise ModelError(f"exported program {path} does not exist", hint="pass --exported with the path of a .pt2 file")
    check_archive(path)
    try:
        with _weights_only():
            program = torch.export.load(str(path))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"exported program {path} cannot be loaded with tensors only ({type(exc).__name__}: {first})", hint=_HINT) from None
    info = program_info(program, path)
    if not info.dynamic_batch:
        raise ModelError(f"exported program {path} was exported with a static batch of {info.batch_min}",
                         hint="export it with dynamic_shapes={'x': {0: torch.export.Dim('batch', max=...)}}")
    return ExportedClassifier(program, info).eval()
