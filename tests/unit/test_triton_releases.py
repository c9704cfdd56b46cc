"""The NGC container table (``triton/releases``): which container ships the TensorRT of a plan.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

from sft_engine.triton import releases
from sft_engine.triton.releases import triton_tag_for_tensorrt


def test_container_tag_for_tensorrt_version():
    assert triton_tag_for_tensorrt("10.5.0.18").tag == "24.10"
    assert triton_tag_for_tensorrt("10.0.1").tag == "24.05"
    assert triton_tag_for_tensorrt("10.8.0.43").tag == "25.02", "newest release with that TensorRT"
    assert triton_tag_for_tensorrt("10.16.0.72").tag == "26.03"
    assert triton_tag_for_tensorrt("10.16.1") is None, "a patch release no container ships"
    assert triton_tag_for_tensorrt("11.0.0") is None
    tags = [r.tag for r in releases.TRITON_RELEASES]
    assert tags == sorted(tags) and len(set(tags)) == len(tags)


# -- container table, refusal of unservable plans, detailed profiling ----------------------

def test_container_table_has_rows_for_the_tensorrt_of_recent_torch_tensorrt():
    """TensorRT of Torch-TensorRT 2.9 / 2.10 / 2.11 (each tag's dev_dep_versions.yml) has a container row;
    2.12's 10.16.1 and 2.13's 11.0.0 have none."""
    assert triton_tag_for_tensorrt("10.13.3.9").tag == "25.10"
    assert triton_tag_for_tensorrt("10.14.1.48").tag == "26.01"
    assert triton_tag_for_tensorrt("10.15.1").tag == "26.02"
    assert triton_tag_for_tensorrt("10.13.2.6").tag == "25.08"
    assert triton_tag_for_tensorrt("10.12.0") is None, "no container shipped 10.12"
    assert "25.07" not in [r.tag for r in releases.TRITON_RELEASES], "there is no 25.07 -py3 release"


def test_every_container_row_cites_its_source_and_says_whether_it_was_verified():
    source = __import__("inspect").getsource(releases)
    rows = [line for line in source.splitlines() if line.strip().startswith("TritonRelease(\"")]
    assert len(rows) == len(releases.TRITON_RELEASES)
    for line, release in zip(rows, releases.TRITON_RELEASES):
        yy, mm = release.tag.split(".")
        assert f"# rel-{yy}-{mm}" in line, line
        assert ("verified=True" in line and "package list" in line) == release.verified, line
        assert release.verified or "unverified" in line, line


def test_nearest_releases_bracket_a_tensorrt_version():
    older, newer = releases.nearest_releases("10.12.0")
    assert (older.tag, newer.tag) == ("25.06", "25.08")
    older, newer = releases.nearest_releases("11.0.0")
    assert older.tag == "26.03" and newer is None
