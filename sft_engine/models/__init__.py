"""Model sources (torchvision, timm) behind one registry, and safe checkpoint loading.

The torch / torchvision pair is checked here, before anything imports torchvision.
"""

from sft_engine.deps import check_torch_pair

check_torch_pair()

from sft_engine.models.checkpoint import (  # noqa: E402
    KeyReport,
    align_keys,
    apply_state_dict,
    load_state_dict_file,
    load_weights,
    save_state_dict,
    sha256_file,
)
from sft_engine.models.registry import (  # noqa: E402
    ArchSpec,
    build_model,
    canonical_arch,
    get_arch,
    get_source,
    head_prefix,
    list_archs,
    register_arch,
    source_preprocessing,
)
from sft_engine.models.source import ArchInfo, ModelSource, split_name  # noqa: E402

__all__ = [
    "ArchSpec",
    "KeyReport",
    "align_keys",
    "ArchInfo",
    "ModelSource",
    "apply_state_dict",
    "build_model",
    "canonical_arch",
    "get_source",
    "get_arch",
    "head_prefix",
    "list_archs",
    "load_state_dict_file",
    "load_weights",
    "register_arch",
    "save_state_dict",
    "sha256_file",
    "source_preprocessing",
    "split_name",
]
