"""A served model's configuration, read from the server's JSON into typed specs.

Both protocols serve the model configuration as JSON, but not identically: gRPC's
JSON form (protobuf ``MessageToDict``, wrapped in ``{"config": ...}``) writes int64
dims as strings and leaves out default values; HTTP writes numbers and every field.
``normalize_config`` brings both to the HTTP form, and ``ServedModel.from_config``
reads that into the tensors, batching and parameters every part needs (the client's
classifier view and the load test's request builder are both made from it).

Data types are named as the inference protocol names them (``FP32``, ``BYTES``);
``numpy_dtype`` asks tritonclient's own table for the numpy type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["ServedTensor", "ServedModel", "normalize_config", "wire_datatype", "numpy_dtype", "model_path"]


def normalize_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config (either protocol's JSON form) in HTTP's form: dims as ints, defaults present.

    The result is still a valid config (a load may carry it back as an override):
    only fields of the tensor's own message are filled in.
    """
    inner = config.get("config")
    cfg = dict(inner) if isinstance(inner, Mapping) else dict(config)
    cfg["max_batch_size"] = int(cfg.get("max_batch_size", 0) or 0)
    for key in ("input", "output"):
        tensors = []
        for tensor in cfg.get(key, []) or []:
            tensor = dict(tensor)
            tensor["dims"] = [int(d) for d in tensor.get("dims", [])]
            tensor.setdefault("data_type", "TYPE_FP32")
            if key == "output":  # ModelOutput has label_filename, ModelInput does not
                tensor.setdefault("label_filename", "")
            tensors.append(tensor)
        cfg[key] = tensors
    cfg.setdefault("parameters", {})
    return cfg


def wire_datatype(config_type: str) -> str:
    """``TYPE_FP32`` (model config) -> ``FP32`` (inference protocol); ``TYPE_STRING`` -> ``BYTES``."""
    name = config_type[5:] if config_type.startswith("TYPE_") else config_type
    return "BYTES" if name == "STRING" else name


def numpy_dtype(datatype: str) -> Any:
    """The numpy type of an inference-protocol data type, or None when numpy has none (BF16)."""
    from tritonclient.utils import triton_to_np_dtype

    return triton_to_np_dtype(datatype)


def model_path(model: str, version: str = "") -> str:
    """The HTTP path of a model (and version) under ``/v2``."""
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


@dataclass(frozen=True)
class ServedTensor:
    """One input or output as the served config declares it (dims exclude the batch dimension)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False
    label_filename: str = ""

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> "ServedTensor":
        return cls(
            name=str(entry["name"]), datatype=wire_datatype(str(entry.get("data_type", "TYPE_FP32"))),
            dims=tuple(int(d) for d in entry.get("dims", [])), optional=bool(entry.get("optional", False)),
            label_filename=str(entry.get("label_filename", "") or ""),
        )


@dataclass(frozen=True)
class ServedModel:
    """What a server says about one model: tensors, batching, backend, parameters.

    ``version`` is the version asked for ("" = the server's latest); ``config`` the
    whole configuration in HTTP's JSON form, for what the fields here leave out.
    """

    name: str
    version: str
    max_batch_size: int
    inputs: tuple[ServedTensor, ...]
    outputs: tuple[ServedTensor, ...]
    backend: str = ""
    dynamic_batching: bool = False
    instance_count: int = 0
    parameters: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], version: str = "") -> "ServedModel":
        """Read a model config as HTTP or gRPC ``get_model_config`` returns it (as JSON)."""
        cfg = normalize_config(config)
        groups = cfg.get("instance_group") or []
        params = {str(k): str(v.get("string_value", "")) if isinstance(v, Mapping) else str(v)
                  for k, v in (cfg.get("parameters") or {}).items()}
        return cls(
            name=str(cfg.get("name", "")),
            version=version,
            max_batch_size=cfg["max_batch_size"],
            inputs=tuple(ServedTensor.from_config(t) for t in cfg["input"]),
            outputs=tuple(ServedTensor.from_config(t) for t in cfg["output"]),
            backend=str(cfg.get("backend") or cfg.get("platform") or ""),
            dynamic_batching="dynamic_batching" in cfg,
            instance_count=sum(int(g.get("count", 1) or 1) for g in groups),
            parameters=params,
            config=cfg,
        )

    @property
    def batching(self) -> bool:
        """Whether the model takes a leading batch dimension (Triton: max_batch_size > 0)."""
        return self.max_batch_size > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "max_batch_size": self.max_batch_size,
            "backend": self.backend,
            "dynamic_batching": self.dynamic_batching,
            "instance_count": self.instance_count,
            "inputs": [{"name": t.name, "datatype": t.datatype, "dims": list(t.dims)} for t in self.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "dims": list(t.dims)} for t in self.outputs],
        }
