"""Build + publish without a server: versions, manifests, atomicity, bad input through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sft_engine.build import build
from sft_engine.cli import main
from sft_engine.build_config import BuildConfig
from sft_engine.engines.cpu.isa import cpu_has_native_bf16
from sft_engine.errors import ParityError, RepositoryError
from sft_engine.models import build_model, save_state_dict, sha256_file
from sft_engine.repository.config import read_config
from sft_engine.repository.manifest import read_manifest
from tests.helpers import LABELS, tree_digest


def _cfg(weights: Path, repo: Path, **kw) -> BuildConfig:
    base = dict(arch="resnet18", num_classes=4, weights=weights, input_size=32, max_batch_size=8, repository=repo,
                name="tiny", engine="onnxruntime", labels=list(LABELS), parity_samples=8)
    base.update(kw)
    return BuildConfig(**base)


@pytest.fixture(scope="module")
def published(tiny_weights, tmp_path_factory):
    repo = tmp_path_factory.mktemp("pub") / "repo"
    result = build(_cfg(tiny_weights, repo))
    return repo, result


def test_first_build_layout_and_manifest(published, tiny_weights):
    repo, result = published
    assert result.published.version == 1
    model_dir = repo / "tiny"
    assert (model_dir / "labels.txt").read_text().splitlines() == LABELS
    cfg = read_config(model_dir / "config.pbtxt")
    assert cfg.backend == "python" and cfg.max_batch_size == 8
    assert cfg.parameters["preprocess_input_size"].string_value == "32"
    manifest = read_manifest(model_dir / "1").to_dict()
    assert manifest["inputs"]["weights"]["sha256"] == sha256_file(tiny_weights)
    assert manifest["parity"]["passed"] and manifest["parity"]["top1_agreement"] == 1.0
    for name, entry in manifest["outputs"].items():
        assert sha256_file(model_dir / "1" / name) == entry["sha256"]
    assert manifest["tools"]["torch"] and manifest["engine"] == "onnxruntime"
    assert not list(repo.parent.glob(".repo.sft-staging/build-*")), "staging leftovers"


def test_second_build_adds_version_and_keeps_first(published, tiny_weights):
    repo, _ = published
    before = tree_digest(repo / "tiny" / "1")
    result = build(_cfg(tiny_weights, repo, max_queue_delay_us=500))
    assert result.published.version == 2
    assert tree_digest(repo / "tiny" / "1") == before
    assert read_config(repo / "tiny" / "config.pbtxt").dynamic_batching.max_queue_delay_microseconds == 500


def test_interface_change_is_refused_untouched(published, tmp_path):
    repo, _ = published
    weights = tmp_path / "w10.safetensors"
    save_state_dict(build_model("resnet18", 10), weights)
    before = tree_digest(repo)
    with pytest.raises(RepositoryError, match="another interface"):
        build(_cfg(weights, repo, num_classes=10, labels=None))
    assert tree_digest(repo) == before


def test_parity_failure_publishes_nothing(tiny_weights, tmp_path):
    repo = tmp_path / "repo"
    with pytest.raises(ParityError, match="no CPU engine matches"):
        build(_cfg(tiny_weights, repo, parity_atol=0.0, parity_rtol=0.0, parity_samples=4))
    assert tree_digest(repo) == {}


def test_failure_while_publishing_leaves_repo_untouched(published, tiny_weights, monkeypatch):
    repo, _ = published
    before = tree_digest(repo)
    import sft_engine.repository.writer as writer

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "_fsync_tree", boom)
    with pytest.raises(RepositoryError, match="disk full"):
        build(_cfg(tiny_weights, repo))
    assert tree_digest(repo) == before


def test_killed_build_leaves_repo_untouched(published, tiny_weights, labels_file, tmp_path):
    """SIGKILL while publishing: the engine is staged beside the repository, nothing is committed yet."""
    repo, _ = published
    before = tree_digest(repo)
    marker = tmp_path / "paused"
    cmd = [sys.executable, "-m", "sft_engine.cli", "build", "--arch", "resnet18", "--weights", str(tiny_weights),
           "--num-classes", "4", "--input-size", "32", "--repository", str(repo), "--name", "tiny", "--engine", "onnxruntime", "--labels", str(labels_file)]
    env = dict(os.environ, SFT_ENGINE_PUBLISH_PAUSE_AT="0", SFT_ENGINE_PUBLISH_PAUSE_FILE=str(marker))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"the build did not reach publishing: {proc.stdout.read() if proc.poll() is not None else ''}"  # type: ignore[union-attr]
    assert marker.read_text().split()[:2] == ["0", "staged"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    staged = list(repo.parent.glob(".repo.sft-staging/build-*/tiny/*/model.onnx"))
    assert staged, "the killed build had its version staged"
    assert tree_digest(repo) == before


def _run_cli(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip()


BAD = [
    (["--arch", "resnet9"], "unknown architecture 'resnet9'"),
    (["--weights", "{missing}"], "does not exist"),
    (["--weights", "{truncated}"], "cannot be read"),
    (["--weights", "{pickled}"], "pickled Python objects"),
    (["--num-classes", "10"], "does not fit the model"),
    (["--weights", "{resnet34}"], "does not fit the model"),
    (["--labels", "{three_labels}"], "3 labels but num_classes is 4"),
    (["--name", "a/b"], "model name 'a/b' is not allowed"),
    (["--name", ".."], "is not allowed"),
    (["--name", "my model"], "is not allowed"),
    (["--mean", "0.5,x"], "--mean must be comma-separated numbers"),
    (["--max-batch-size", "0"], "max batch size 0 is out of range"),
    (["--spec", "{missing}"], "does not exist"),
    (["--precision", "bf16"], "engine onnxruntime has no bf16 mode"),
    (["--precision", "fp32", "--target", "tensorrt"], "--target tensorrt has no fp32 mode"),
    (["--precision", "int8", "--target", "torchscript-gpu"], "--precision applies to --target cpu or tensorrt"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_weights):
    d = tmp_path_factory.mktemp("bad")
    data = tiny_weights.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 3])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"w": Evil()}, d / "pickled.pt")
    save_state_dict(build_model("resnet34", 4), d / "resnet34.safetensors")
    (d / "three.txt").write_text("a\nb\nc\n")
    return {"missing": str(d / "nope.safetensors"), "truncated": str(d / "truncated.safetensors"),
            "pickled": str(d / "pickled.pt"), "resnet34": str(d / "resnet34.safetensors"), "three_labels": str(d / "three.txt")}


@pytest.mark.parametrize("extra, needle", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_one_line_exit_2_repo_untouched(capsys, published, tiny_weights, bad_files, extra, needle):
    repo, _ = published
    before = tree_digest(repo)
    argv = ["build", "--arch", "resnet18", "--weights", str(tiny_weights), "--num-classes", "4", "--input-size", "32",
            "--repository", str(repo), "--name", "tiny", "--engine", "onnxruntime"]
    extra = [e.format(**bad_files) for e in extra]
    for i in range(0, len(extra), 2):  # later flags override earlier ones in argparse
        argv += extra[i:i + 2]
    code, err = _run_cli(capsys, argv)
    assert code == 2, err
    assert needle in err
    # progress lines may precede it; the error itself is exactly one line, the last
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0] and "Traceback" not in err
    assert tree_digest(repo) == before


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sft_engine.cli", "build", "--arch", "nope", "--num-classes", "3",
                           "--allow-random-weights", "--repository", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown architecture 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_build_spec_file(tmp_path, tiny_weights, labels_file):
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[build]\narch = "resnet18"\nweights = "{tiny_weights}"\nlabels_file = "{labels_file}"\n'
                    f'input_size = 32\nmax_batch_size = 4\nname = "fromspec"\nengine = "onnxruntime"\nrepository = "{tmp_path / "repo"}"\n')
    code = main(["build", "--spec", str(spec), "--json"])
    assert code == 0
    cfg = read_config(tmp_path / "repo" / "fromspec" / "config.pbtxt")
    assert cfg.max_batch_size == 4
    bad = tmp_path / "bad.toml"
    bad.write_text('[build]\narhc = "resnet18"\n')
    assert main(["build", "--spec", str(bad)]) == 2


def test_auto_engine_records_every_candidate(tmp_path, tiny_weights):
    result = build(_cfg(tiny_weights, tmp_path / "repo", engine="auto", selection_budget_s=0.5))
    manifest = json.loads((result.published.path / "build_manifest.json").read_text())
    names = {c["candidate"] for c in manifest["candidates"]}
    expected = {"onnxruntime", "torchscript", "openvino"} | ({"openvino-bf16"} if cpu_has_native_bf16() else set())
    assert names == expected
    timed = [c for c in manifest["candidates"] if "latency" in c]
    assert len(timed) == len(expected)
    fastest = min(timed, key=lambda c: c["latency"]["p50_ms"])
    assert (manifest["engine"], manifest["engine_details"]["precision"]) == (fastest["engine"], fastest["precision"])
    assert result.precision == fastest["precision"]


def test_engine_without_its_runtime_is_one_line_exit_2(tmp_path, tiny_weights):
    """--engine openvino without openvino installed: one line naming the package; auto skips it and records why."""
    code = ("import sys; sys.modules['openvino'] = None; from sft_engine.cli import main; "
            f"sys.exit(main(['build', '--arch', 'resnet18', '--weights', {str(tiny_weights)!r}, '--num-classes', '4', "
            f"'--input-size', '32', '--repository', {str(tmp_path / 'repo')!r}, '--engine', 'openvino']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "needs the openvino package" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "repo").exists()
    code = code.replace("'--engine', 'openvino'", "'--engine', 'auto', '--json'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "repo" / "resnet18" / "1" / "build_manifest.json").read_text())
    skipped = {c["candidate"]: c for c in manifest["candidates"] if not c["exported"]}
    assert set(skipped) >= {"openvino"} and skipped["openvino"]["error"] == "openvino is not installed"
    assert manifest["engine"] in ("onnxruntime", "torchscript")


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_candidate_failing_its_gate_falls_back_to_fp32(tmp_path, tiny_weights, capsys):
    """A tolerance bf16 cannot meet: the FP32 engine is published and the output says why bf16 lost."""
    argv = ["build", "--arch", "resnet18", "--weights", str(tiny_weights), "--num-classes", "4", "--input-size", "32",
            "--repository", str(tmp_path / "repo"), "--engine", "openvino", "--parity-atol", "1e-5", "--parity-rtol", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(cpu/openvino fp32)" in out
    assert "candidate openvino-bf16: failed its gate (max|diff|" in out
    manifest = read_manifest(tmp_path / "repo" / "resnet18" / "1").to_dict()
    assert manifest["engine_details"]["precision"] == "fp32"
    assert {c["candidate"]: c["parity"]["passed"] for c in manifest["candidates"]} == {"openvino": True, "openvino-bf16": False}


def test_manifest_round_trips_and_reads_the_unversioned_format(tmp_path):
    """A manifest of the format before it was versioned (no ``format`` key) still reads, and rewrites losslessly."""
    from sft_engine.errors import RepositoryError
    from sft_engine.repository.manifest import MANIFEST_FORMAT, BuildManifest, find_manifest

    old = {"model": "m", "version": 3, "engine": "onnxruntime", "settings": {"seed": 5, "calibration_dir": None},
           "inputs": {"weights": {"file": "w.safetensors", "sha256": "ab"}}, "compatibility": {"triton_container_tag": "24.10"},
           "tools": {"numpy": "1.26.4"}, "something_new": {"kept": True}}
    manifest = BuildManifest.from_dict(old)
    assert manifest.format_version == 0 and manifest.setting("seed") == 5 and manifest.setting("calibration_dir", "x") == "x"
    assert manifest.weights_sha256 == "ab" and manifest.triton_container_tag == "24.10" and manifest.parity_tolerance is None
    again = manifest.to_dict()
    assert again["format"] == MANIFEST_FORMAT and again["something_new"] == {"kept": True} and again["tools"] == old["tools"]
    assert BuildManifest.from_dict(again).to_dict() == again
    with pytest.raises(RepositoryError, match="newer than this sft-engine reads"):
        BuildManifest.from_dict({"format": "sft-engine/build-manifest@99"})
    (tmp_path / "build_manifest.json").write_text("{not json")
    assert find_manifest(tmp_path) is None and find_manifest(tmp_path / "absent") is None
