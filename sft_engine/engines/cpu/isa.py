"""Which arithmetic this CPU runs natively: INT8 dot products and bfloat16.

INT8 is worth building only where the CPU has integer dot-product instructions:
AMX-INT8, AVX512-VNNI or AVX-VNNI (one instruction per 4-way u8·s8 dot product), or
AVX2, whose VPMADDUBSW + VPMADDWD pair does the same in two (oneDNN's and ONNX Runtime's
pre-VNNI INT8 kernels; measured 1.9-2.9x the FP32 engine on an AVX2-only AMD EPYC, see
docs/performance.md). Without even AVX2 an INT8 engine runs emulated and loses the
timing, so ``auto`` leaves it out and ``--precision int8`` is refused unless
``--allow-emulated-int8`` builds it for other hosts. bf16 is native with AVX512-BF16 or
AMX, as OpenVINO reports it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sft_engine.errors import TargetUnavailable

__all__ = ["INT8_ISAS", "BF16_ISAS", "cpu_int8_isa", "cpu_bf16_isa", "require_int8_isa", "cpu_has_native_bf16"]


#: /proc/cpuinfo flag → name, best first
INT8_ISAS = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2"))
#: bf16 arithmetic in hardware (oneDNN's bf16 kernels; without them PyTorch emulates it, slower than fp32)
BF16_ISAS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


def _best_isa(table: tuple[tuple[str, str], ...], cpuinfo: str | None) -> str | None:
    """The first entry of ``table`` whose /proc/cpuinfo flag this CPU has (None off Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return next((name for flag, name in table if flag in flags), None)


def cpu_int8_isa(cpuinfo: str | None = None) -> str | None:
    """The best INT8 dot-product instruction set of this CPU (``AMX-INT8``, ...), or None.

    ``cpuinfo``: the text of /proc/cpuinfo (read when not given; None off Linux).
    """
    return _best_isa(INT8_ISAS, cpuinfo)


def cpu_bf16_isa(cpuinfo: str | None = None) -> str | None:
    """``AMX-BF16`` or ``AVX512-BF16`` where this CPU does bf16 arithmetic natively, else None.

    Read from /proc/cpuinfo rather than OpenVINO (``cpu_has_native_bf16``) so that
    fine-tuning, which needs only torch, can ask too.
    """
    return _best_isa(BF16_ISAS, cpuinfo)


def require_int8_isa(isa: str | None) -> str:
    """``isa`` itself; refuses (one line naming what is missing) when there is none."""
    if isa is None:
        raise TargetUnavailable(
            "this CPU has no INT8 dot-product instructions (AMX-INT8, AVX512-VNNI, AVX-VNNI or AVX2): an INT8 engine would run emulated",
            hint="build with --precision bf16 or fp32, or on a CPU of the serving hosts' kind (or here for them: --allow-emulated-int8)",
        )
    return isa



def cpu_has_native_bf16() -> bool:
    """Whether OpenVINO reports bf16 arithmetic on this CPU (AVX512-BF16 or AMX)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
