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
    2.12's 10.16.1 and 2.13's 11.0.0 have none that a source confirms."""
    assert triton_tag_for_tensorrt("10.13.3.9").tag == "25.10"
    assert triton_tag_for_tensorrt("10.14.1.48").tag == "26.01"
    assert triton_tag_for_tensorrt("10.15.1").tag == "26.02"
    assert triton_tag_for_tensorrt("10.13.2.6").tag == "25.08"
    assert triton_tag_for_tensorrt("10.12.0") is None, "no container shipped 10.12"


def test_the_releases_up_to_26_07_are_present_and_those_of_unknown_tensorrt_match_no_plan():
    tags = [r.tag for r in releases.TRITON_RELEASES]
    assert {"25.07", "26.04", "26.05", "26.06", "26.07"} <= set(tags)
    unknown = [r.tag for r in releases.unknown_tensorrt_releases()]
    assert unknown == ["25.07", "26.04", "26.05", "26.06", "26.07"]
    assert releases.DEFAULT_RELEASE == "26.03", "the default is the newest with a confirmed TensorRT"


def test_upstream_containers_follow_the_server_build_py():
    """DEFAULT_TRITON_VERSION_MAP at v2.69.0 / v2.70.0: 26.05 is built from pytorch 26.04, 26.06 from 26.05; all others match."""
    differ = {r.tag: r.upstream for r in releases.TRITON_RELEASES if r.upstream != r.tag}
    assert differ == {"26.05": "26.04", "26.06": "26.05"}
    assert releases.release("26.05").torch == releases.release("26.04").torch == "2.12"


def test_every_row_names_its_sources_and_whether_its_tensorrt_is_confirmed():
    for row in releases.TRITON_RELEASES:
        assert row.source.startswith("build.py@"), row
        assert row.source in (f"build.py@v{row.triton}", "build.py@r25.01", f"build.py@v{row.triton} (image publication unverified)"), row
        assert row.tensorrt_source and row.torch_source, row
        if row.tensorrt is None:
            assert not row.verified and row.tensorrt_source.startswith("none") and "unknown" in row.describe_tensorrt()
        elif row.verified:
            assert any(s in row.tensorrt_source for s in ("package list", "issue")), row
        else:
            assert row.tensorrt_source == releases.UNVERIFIED and "(unverified)" in row.describe_tensorrt()
        if row.torch is not None:
            assert row.torch_source in (f"ngc-trt/{row.upstream}",) or "release notes" in row.torch_source, row
    assert [r.tag for r in releases.TRITON_RELEASES if r.verified] == ["24.02", "24.05", "26.03"]


def test_nearest_releases_bracket_a_tensorrt_version():
    older, newer = releases.nearest_releases("10.12.0")
    assert (older.tag, newer.tag) == ("25.06", "25.08")
    older, newer = releases.nearest_releases("11.0.0")
    assert older.tag == "26.03" and newer is None


def test_torchscript_is_served_by_a_release_whose_libtorch_is_at_least_its_torch():
    assert releases.triton_tag_for_torch("2.12.0").tag == "26.06", "the newest of the same minor"
    assert releases.triton_tag_for_torch("2.13.0").tag == "26.07", "else the oldest newer one"
    assert releases.triton_tag_for_torch("2.10.0a0+b4e4ee81d3.nv25.12").tag == "26.01"
    assert releases.triton_tag_for_torch("2.15.0") is None
