"""The NGC Triton containers: the PyTorch container each is built from, and the TensorRT and libtorch it ships.

A TensorRT plan loads only in a runtime of the TensorRT version that built it
(server issue 3710: "Version tag does not match"), and libtorch loads TorchScript saved
by the same or an older torch. A ``tritonserver:<tag>-py3`` image takes both from its
*upstream container*, ``pytorch:<upstream>-py3`` (the server's ``build.py`` builds the
PyTorch backend from it, and the TensorRT comes from the same base), which is usually of
the same number but not always: 26.05 is built from 26.04 and 26.06 from 26.05. So a
plan or a TorchScript file built in ``pytorch:<upstream>`` loads in ``tritonserver:<tag>``
by construction, and that is how ``ngc`` pairs them.

Sources, named per row (``source``, ``tensorrt_source``, ``torch_source``):

* ``build.py@vX``: triton-inference-server/server ``build.py`` at tag vX, its
  ``TRITON_VERSION_MAP`` (up to v2.52.0) / ``DEFAULT_TRITON_VERSION_MAP`` (from v2.53.0):
  the Triton version, the container version and the upstream container of every row.
  It names no TensorRT version.
* ``rel-YY-MM``: the Triton release note of that month
  (docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-YY-MM.html),
  its package list where a TensorRT was read from it.
* ``ngc-trt/YY.MM``: pytorch/TensorRT branch ``release/ngc/YY.MM``, ``version.txt``: the
  Torch-TensorRT 2.m inside ``pytorch:YY.MM``, built for torch 2.m (its pyproject pins one
  torch minor), hence the torch minor of that container. Its ``dev_dep_versions.yml``
  TensorRT lags the container's and is not used.

A TensorRT no source confirmed is ``unverified`` (transcribed from the Frameworks Support
Matrix earlier and not re-read: check it there before relying on it) or unknown (None):
no source in reach gives the TensorRT of 25.07 and 26.04 – 26.07. Pure data and lookups
(version parsing is ``deps``').
"""

from __future__ import annotations

from dataclasses import dataclass

from sft_engine.deps import minor_of

__all__ = ["TritonRelease", "TRITON_RELEASES", "NEWEST_TABULATED", "DEFAULT_RELEASE", "UNVERIFIED", "release_key",
           "release", "triton_tag_for_tensorrt", "nearest_releases", "unknown_tensorrt_releases", "triton_tag_for_torch"]

#: ``tensorrt_source`` of a transcribed row
UNVERIFIED = "unverified: transcribed from the Frameworks Support Matrix, not re-read"


@dataclass(frozen=True)
class TritonRelease:
    """One NGC ``tritonserver:<tag>-py3`` release.

    ``upstream``: the ``pytorch:<upstream>-py3`` container its PyTorch backend and TensorRT
    come from (build with it); ``tensorrt``: the TensorRT it ships, None where no source
    gives it; ``torch``: the torch (its libtorch) of the upstream container, at least
    major.minor, None where unknown; ``source`` / ``tensorrt_source`` / ``torch_source``:
    where each came from (module docstring).
    """

    tag: str
    triton: str
    upstream: str
    tensorrt: str | None
    torch: str | None
    source: str
    tensorrt_source: str
    torch_source: str

    @property
    def verified(self) -> bool:
        """Whether a source confirmed the TensorRT version (not merely transcribed, nor unknown)."""
        return self.tensorrt is not None and self.tensorrt_source != UNVERIFIED

    def describe_tensorrt(self) -> str:
        """``"26.03 ships TensorRT 10.16.0.72"``, with ``(unverified)`` or ``(TensorRT unknown)`` where so."""
        if self.tensorrt is None:
            return f"{self.tag} (TensorRT unknown: no source gives it)"
        return f"{self.tag} ships TensorRT {self.tensorrt}" + ("" if self.verified else " (unverified)")


def _ngc(upstream: str) -> str:
    return f"ngc-trt/{upstream}"


def _row(tag: str, triton: str, tensorrt: str | None, torch: str | None, *, upstream: str | None = None,
         tensorrt_source: str = UNVERIFIED, torch_source: str | None = None, source: str | None = None) -> TritonRelease:
    upstream = upstream or tag
    return TritonRelease(tag, triton, upstream, tensorrt, torch, source or f"build.py@v{triton}",
                         tensorrt_source if tensorrt is not None else "none: no source gives it",
                         torch_source or (_ngc(upstream) if torch else "none: no release/ngc branch"))


#: NGC Triton containers (``-py3``) by release, oldest first. Not a source for this table: the
#: ``trtllm-python-py3`` containers of the server's docs/introduction/compatibility.md, which
#: ship an older TensorRT than the ``-py3`` container of the same month (26.03: 10.14.1.48
#: against 10.16.0.72). 25.07: the server has tag v2.59.1 and branch r25.07 naming container
#: 25.07 (upstream 25.07) and its README shows ``tritonserver:25.07-py3``, but the release-notes
#: index goes from 25.06 to 25.08: whether the image was published is unverified.
TRITON_RELEASES: tuple[TritonRelease, ...] = (
    _row("24.01", "2.42.0", "8.6.1.6", "2.2"),
    _row("24.02", "2.43.0", "8.6.3", "2.3",
         tensorrt_source="server issue 6959: the maintainer's dpkg check in tritonserver:24.02-py3 (TensorRT 8.6.3)"),
    _row("24.03", "2.44.0", "8.6.3", "2.3"),
    _row("24.04", "2.45.0", "8.6.3", "2.3"),
    _row("24.05", "2.46.0", "10.0.1.6", "2.4", tensorrt_source="rel-24-05 package list (also server issue 7374)"),
    _row("24.06", "2.47.0", "10.1.0.27", "2.4"),
    _row("24.07", "2.48.0", "10.2.0.19", "2.5"),
    _row("24.08", "2.49.0", "10.3.0.26", "2.5"),
    _row("24.09", "2.50.0", "10.4.0.26", "2.5"),
    _row("24.10", "2.51.0", "10.5.0.18", "2.5"),
    _row("24.11", "2.52.0", "10.6.0.26", "2.6"),
    _row("24.12", "2.53.0", "10.7.0.23", "2.6"),
    # the v2.54.0 tag is a main commit still naming 25.01dev / upstream 24.12: branch r25.01 is the release
    _row("25.01", "2.54.0", "10.8.0.43", "2.6", source="build.py@r25.01"),
    _row("25.02", "2.55.0", "10.8.0.43", "2.6"),
    _row("25.03", "2.56.0", "10.9.0.34", "2.7"),
    _row("25.04", "2.57.0", "10.9.0.34", "2.7"),
    _row("25.05", "2.58.0", "10.10.0.31", "2.8"),
    _row("25.06", "2.59.0", "10.11.0.33", "2.8"),
    _row("25.07", "2.59.1", None, None, source="build.py@v2.59.1 (image publication unverified)"),
    _row("25.08", "2.60.0", "10.13.2.6", "2.8"),
    _row("25.09", "2.61.0", "10.13.3.9", "2.9"),
    _row("25.10", "2.62.0", "10.13.3.9", "2.9"),
    _row("25.11", "2.63.0", "10.14.1.48", "2.10"),
    _row("25.12", "2.64.0", "10.14.1.48", "2.10.0a0+b4e4ee81d3",
         torch_source="PyTorch release notes 25.12 (pytorch-release-notes/rel-25-12.html)"),
    _row("26.01", "2.65.0", "10.14.1.48", "2.10"),
    _row("26.02", "2.66.0", "10.15.1.29", "2.11"),
    _row("26.03", "2.67.0", "10.16.0.72", "2.11", tensorrt_source="rel-26-03 package list"),
    _row("26.04", "2.68.0", None, "2.12"),
    _row("26.05", "2.69.0", None, "2.12", upstream="26.04"),
    _row("26.06", "2.70.0", None, "2.12", upstream="26.05"),
    _row("26.07", "2.71.0", None, "2.14"),
)

#: the newest release in the table (its TensorRT may be unknown)
NEWEST_TABULATED = TRITON_RELEASES[-1].tag
#: ``build --print-docker``'s release when none is given: the newest whose TensorRT is confirmed
DEFAULT_RELEASE = [r for r in TRITON_RELEASES if r.verified][-1].tag


def release_key(version: str) -> tuple[int, ...]:
    """TensorRT identity that must match: major.minor.patch (the build number is not compared)."""
    parts = []
    for piece in str(version).split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def release(tag: str) -> TritonRelease | None:
    """The row of ``tritonserver:<tag>-py3``, or None."""
    return next((r for r in TRITON_RELEASES if r.tag == tag), None)


def _known() -> list[TritonRelease]:
    return [r for r in TRITON_RELEASES if r.tensorrt is not None]


def triton_tag_for_tensorrt(tensorrt_version: str) -> TritonRelease | None:
    """The newest NGC Triton release whose (known) TensorRT matches ``tensorrt_version``, or None."""
    key = release_key(tensorrt_version)
    matches = [r for r in _known() if release_key(r.tensorrt or "") == key]
    return matches[-1] if matches else None


def nearest_releases(tensorrt_version: str) -> tuple[TritonRelease | None, TritonRelease | None]:
    """The newest release whose known TensorRT is older than ``tensorrt_version`` and the oldest newer one."""
    key = release_key(tensorrt_version)
    older = [r for r in _known() if release_key(r.tensorrt or "") < key]
    newer = [r for r in _known() if release_key(r.tensorrt or "") > key]
    return (older[-1] if older else None), (newer[0] if newer else None)


def unknown_tensorrt_releases() -> list[TritonRelease]:
    """The rows whose TensorRT no source gives: a plan no known row matches may still load in one of them."""
    return [r for r in TRITON_RELEASES if r.tensorrt is None]


def triton_tag_for_torch(torch_version: str) -> TritonRelease | None:
    """The release to serve a TorchScript file saved by ``torch_version`` with, or None when no tabulated libtorch loads it.

    libtorch loads TorchScript of the same or an older torch: the newest release of the
    same torch minor, else the oldest with a newer one.
    """
    want = minor_of(torch_version)
    if want is None:
        return None
    known = [(minor_of(r.torch), r) for r in TRITON_RELEASES if r.torch]
    same = [r for minor, r in known if minor == want]
    if same:
        return same[-1]
    newer = [r for minor, r in known if minor is not None and minor > want]
    return newer[0] if newer else None
