"""What the client learns from the server about a model, read once per client.

The server's configuration (either protocol's JSON form) is read by the shared
reader, ``sft_engine.triton.model.ServedModel``; ``ModelInfo`` is the client's view
of it: a classifier with one input tensor and an output of class scores, and the
preprocessing recorded at build time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from sft_engine.client.errors import BadInput, ClientError
from sft_engine.errors import ConfigError
from sft_engine.preprocess import Preprocessing
from sft_engine.triton.model import ServedModel, numpy_dtype

if TYPE_CHECKING:
    from sft_engine.client.wire import InferTarget

__all__ = ["ModelInfo", "parse_classification", "labels_from_classification"]


@dataclass(frozen=True)
class ModelInfo:
    """One classifier's interface: a single input tensor, an output of class scores.

    ``version`` is the version asked for ("" = the server's latest); ``versions``
    the versions the server reports as ready. ``preprocessing`` is None when the
    model was not built by sft-engine (then ``classify`` takes ready tensors only).
    """

    name: str
    version: str
    versions: tuple[str, ...]
    input_name: str
    input_datatype: str
    input_dims: tuple[int, ...]
    output_name: str
    output_datatype: str
    output_dims: tuple[int, ...]
    max_batch_size: int
    has_labels: bool
    preprocessing: Preprocessing | None
    config: Mapping[str, Any]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, version: str = "", versions: Sequence[str] = ()) -> "ModelInfo":
        served = ServedModel.from_config(config, version)
        name = served.name
        inputs, outputs = served.inputs, served.outputs
        if len(inputs) != 1 or not outputs:
            raise ClientError(
                f"model {name!r} has {len(inputs)} inputs and {len(outputs)} outputs; the client serves classifiers with one input and a score output",
                hint="call such models with tritonclient directly",
            )
        out = next((t for t in outputs if t.label_filename), outputs[0])
        prep: Preprocessing | None
        try:
            prep = Preprocessing.from_parameters(served.parameters)
        except (ConfigError, ValueError):
            prep = None
        return cls(
            name=name, version=version, versions=tuple(str(v) for v in versions),
            input_name=inputs[0].name, input_datatype=inputs[0].datatype, input_dims=inputs[0].dims,
            output_name=out.name, output_datatype=out.datatype, output_dims=out.dims,
            max_batch_size=served.max_batch_size, has_labels=bool(out.label_filename), preprocessing=prep, config=served.config,
        )

    @functools.cached_property
    def input_dtype(self) -> np.dtype:
        dtype = numpy_dtype(self.input_datatype)
        if dtype is None:
            raise BadInput(f"model {self.name!r} takes {self.input_datatype}, which numpy cannot hold", hint="call it with tritonclient directly")
        return np.dtype(dtype)

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.output_dims)) if all(d > 0 for d in self.output_dims) else -1

    @functools.cached_property
    def batching(self) -> bool:
        """Whether the model takes a leading batch dimension (Triton: max_batch_size > 0)."""
        return self.max_batch_size > 0

    @functools.cached_property
    def chunk_size(self) -> int:
        """How many items one request may carry."""
        return self.max_batch_size if self.batching else 1

    def batch_shape(self, n: int | str = "N") -> list[Any]:
        """The shape a batch of ``n`` items must have (for messages and checks)."""
        return [n, *self.input_dims]

    def static_input_bytes(self) -> int | None:
        """Bytes of one item's input, or None when a dim is variable (-1)."""
        if any(d < 0 for d in self.input_dims):
            return None
        return int(np.prod(self.input_dims)) * self.input_dtype.itemsize

    def static_output_bytes(self) -> int | None:
        if any(d < 0 for d in self.output_dims) or self.output_datatype == "BYTES":
            return None
        return int(np.prod(self.output_dims)) * np.dtype(numpy_dtype(self.output_datatype)).itemsize
    def target(self) -> "InferTarget":
        """Where requests for this model go, and the tensors they name."""
        from sft_engine.client.wire import InferTarget

        out_dtype = numpy_dtype(self.output_datatype) or np.float32
        return InferTarget(self.name, self.version, self.input_name, self.input_datatype, self.output_name, np.dtype(out_dtype))

    def probe_input(self) -> np.ndarray:
        """A zero batch of one item (variable dims as 1): the request that reads the labels."""
        dims = [d if d > 0 else 1 for d in self.input_dims]
        return np.zeros([1, *dims] if self.batching else dims, dtype=self.input_dtype)

    def shm_sizes(self) -> tuple[int, int]:
        """Bytes of one full request's input and output, for shared memory regions."""
        in_bytes, out_bytes = self.static_input_bytes(), self.static_output_bytes()
        if in_bytes is None or out_bytes is None:
            raise ClientError(f"model {self.name!r} has variable-size or string tensors, which shared memory regions cannot be sized for",
                              hint="use shared_memory=False")
        return in_bytes * self.chunk_size, out_bytes * self.chunk_size


def parse_classification(entry: bytes | str) -> tuple[float, int, str | None]:
    """One entry of Triton's classification extension: ``"value:index[:label]"``."""
    text = entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)
    parts = text.split(":", 2)
    return float(parts[0]), int(parts[1]), (parts[2] if len(parts) == 3 else None)


def labels_from_classification(entries: Sequence[bytes | str], num_classes: int) -> list[str]:
    """Every class label, from one classification response with ``class_count = num_classes``.

    Labels live in the model's ``labels.txt`` on the server, which no inference
    protocol call returns directly; the classification extension is the standard
    way to read them, once, without access to the server's file system.
    """
    labels = [str(i) for i in range(num_classes)]
    for entry in entries:
        _, index, label = parse_classification(entry)
        if 0 <= index < num_classes and label is not None:
            labels[index] = label
    return labels
