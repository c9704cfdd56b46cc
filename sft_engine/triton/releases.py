"""The NGC Triton containers and the TensorRT each ships: which container can load a TensorRT plan.

A TensorRT plan loads only in a runtime of the TensorRT version that built it
(server issue 3710: "Version tag does not match"), so a GPU build records the NGC
``tritonserver`` tag whose TensorRT built its plan, read from this table.

The table comes from NVIDIA's published release notes; it needs a new row each month.
Sources:

* Triton release notes, table "NVIDIA Triton Inference Server Container Versions":
  https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-YY-MM.html
* Frameworks Support Matrix (same TensorRT in every NGC framework container of a month):
  https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html

Rows checked against a release note's package list in this project are marked
``verified``; the others are transcribed from the support matrix and should be checked
against it before relying on them. Pure data and lookups: nothing here imports beyond
the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TritonRelease", "TRITON_RELEASES", "NEWEST_TABULATED", "release_key", "triton_tag_for_tensorrt", "nearest_releases"]


@dataclass(frozen=True)
class TritonRelease:
    """One NGC ``tritonserver:<tag>-py3`` release and the TensorRT it ships.

    ``verified``: the TensorRT version was read from the cited NVIDIA source in this
    project; unverified rows were transcribed and must be checked against the
    Frameworks Support Matrix before relying on them (the manifest note says so).
    """

    tag: str
    triton: str
    tensorrt: str
    verified: bool = False


#: NGC Triton containers (``-py3``) by release, oldest first. Each row cites the Triton
#: release note of its month, ``rel-YY-MM`` = docs.nvidia.com/deeplearning/triton-inference-server/
#: release-notes/rel-YY-MM.html (its container-versions table, and the Frameworks Support
#: Matrix it points to, list the TensorRT). The Triton version of each tag follows
#: TRITON_VERSION_MAP in the server's build.py. There is no 25.07 ``-py3`` release (the
#: release-notes index goes from 25.06 to 25.08). Not a source for this table: the
#: ``trtllm-python-py3`` containers of the server's docs/introduction/compatibility.md,
#: which ship an older TensorRT than the ``-py3`` container of the same month (26.03:
#: 10.14.1.48 against 10.16.0.72).
TRITON_RELEASES: tuple[TritonRelease, ...] = (
    TritonRelease("24.01", "2.42.0", "8.6.1.6"),     # rel-24-01; unverified
    TritonRelease("24.02", "2.43.0", "8.6.3"),       # rel-24-02; unverified
    TritonRelease("24.03", "2.44.0", "8.6.3"),       # rel-24-03; unverified
    TritonRelease("24.04", "2.45.0", "8.6.3"),       # rel-24-04; unverified
    TritonRelease("24.05", "2.46.0", "10.0.1.6", verified=True),  # rel-24-05, package list: TensorRT 10.0.1.6
    TritonRelease("24.06", "2.47.0", "10.1.0.27"),   # rel-24-06; unverified
    TritonRelease("24.07", "2.48.0", "10.2.0.19"),   # rel-24-07; unverified
    TritonRelease("24.08", "2.49.0", "10.3.0.26"),   # rel-24-08; unverified
    TritonRelease("24.09", "2.50.0", "10.4.0.26"),   # rel-24-09; unverified
    TritonRelease("24.10", "2.51.0", "10.5.0.18"),   # rel-24-10; unverified
    TritonRelease("24.11", "2.52.0", "10.6.0.26"),   # rel-24-11; unverified
    TritonRelease("24.12", "2.53.0", "10.7.0.23"),   # rel-24-12; unverified
    TritonRelease("25.01", "2.54.0", "10.8.0.43"),   # rel-25-01; unverified
    TritonRelease("25.02", "2.55.0", "10.8.0.43"),   # rel-25-02; unverified
    TritonRelease("25.03", "2.56.0", "10.9.0.34"),   # rel-25-03; unverified
    TritonRelease("25.04", "2.57.0", "10.9.0.34"),   # rel-25-04; unverified
    TritonRelease("25.05", "2.58.0", "10.10.0.31"),  # rel-25-05; unverified
    TritonRelease("25.06", "2.59.0", "10.11.0.33"),  # rel-25-06; unverified
    TritonRelease("25.08", "2.60.0", "10.13.2.6"),   # rel-25-08 (CUDA 13.0.0); unverified
    TritonRelease("25.09", "2.61.0", "10.13.3.9"),   # rel-25-09; unverified
    TritonRelease("25.10", "2.62.0", "10.13.3.9"),   # rel-25-10 (CUDA 13.0.2); unverified
    TritonRelease("25.11", "2.63.0", "10.14.1.48"),  # rel-25-11; unverified
    TritonRelease("25.12", "2.64.0", "10.14.1.48"),  # rel-25-12 (CUDA 13.1.0); unverified
    TritonRelease("26.01", "2.65.0", "10.14.1.48"),  # rel-26-01; unverified
    TritonRelease("26.02", "2.66.0", "10.15.1.29"),  # rel-26-02; unverified
    TritonRelease("26.03", "2.67.0", "10.16.0.72", verified=True),  # rel-26-03, package list: TensorRT 10.16.0.72
)

#: the table has no row for a release after this one; a newer TensorRT may be served by a
#: container published since (the refusal says so)
NEWEST_TABULATED = TRITON_RELEASES[-1].tag


def release_key(version: str) -> tuple[int, ...]:
    """TensorRT identity that must match: major.minor.patch (the build number is not compared)."""
    parts = []
    for piece in str(version).split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def triton_tag_for_tensorrt(tensorrt_version: str) -> TritonRelease | None:
    """The newest NGC Triton release whose TensorRT matches ``tensorrt_version``, or None."""
    key = release_key(tensorrt_version)
    matches = [r for r in TRITON_RELEASES if release_key(r.tensorrt) == key]
    return matches[-1] if matches else None


def nearest_releases(tensorrt_version: str) -> tuple[TritonRelease | None, TritonRelease | None]:
    """The newest release whose TensorRT is older than ``tensorrt_version`` and the oldest newer one."""
    key = release_key(tensorrt_version)
    older = [r for r in TRITON_RELEASES if release_key(r.tensorrt) < key]
    newer = [r for r in TRITON_RELEASES if release_key(r.tensorrt) > key]
    return (older[-1] if older else None), (newer[0] if newer else None)
