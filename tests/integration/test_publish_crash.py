"""Publishing killed with a real SIGKILL at every step, two publishes at once, stale staging.

A separate process (``tests/publish_worker.py``) publishes a version of a really built
engine and is SIGKILLed at each pause point of the publish. Whatever the point, every
version the model-level config makes live must be one built with that config, every
version directory must be complete, a real tritonserver must load the repository
(strict readiness) and serve exactly those versions, and the next writer must finish a
committed publish and drop an uncommitted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sft_engine.build import build
from sft_engine.build_config import BuildConfig
from sft_engine.errors import RepositoryError
from sft_engine.models import sha256_file
from sft_engine.repository.config import parse_pbtxt, to_pbtxt
from sft_engine.repository.manifest import MANIFEST_NAME, BuildManifest, read_manifest, write_manifest
from sft_engine.repository.writer import BUILT_CONFIG_NAME, built_config, list_versions, live_versions, publish, recover, staging_root
from sft_engine.server import ServerConfig, TritonServer
from tests.helpers import LABELS, tree_digest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
#: a publish that changes the config: pin, rename the version in, replace the config
CHANGE_POINTS = range(6)  # 0 staged, 1 committed, 2 pinned, 3 version in, 4 config in, 5 applied
#: a publish of a new model: one rename
NEW_POINTS = range(4)  # 0 staged, 1 committed, 2 model in, 3 applied


@pytest.fixture(scope="module")
def engine(tiny_weights, tmp_path_factory):
    """A really built version: its files (without manifest and record) and its config text."""
    repo = tmp_path_factory.mktemp("source") / "model_repository"
    build(BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=8, repository=repo,
                      name="src", engine="onnxruntime", labels=list(LABELS), parity_samples=8))
    version = repo / "src" / "1"
    files = {p.name: str(p) for p in version.iterdir() if p.is_file() and p.name not in (MANIFEST_NAME, BUILT_CONFIG_NAME)}
    return files, (repo / "src" / "config.pbtxt").read_text()


def _config(text: str, name: str, delay_us: int = 0, num_versions: int = 1) -> str:
    cfg = parse_pbtxt(text)
    cfg.name = name
    cfg.dynamic_batching.max_queue_delay_microseconds = delay_us
    cfg.version_policy.latest.num_versions = num_versions
    return to_pbtxt(cfg)


def _publish_here(repo: Path, name: str, config_text: str, files: dict[str, str]) -> int:
    def manifest(version_dir: Path, version: int) -> None:
        write_manifest(version_dir, BuildManifest(model=name, version=version))

    return publish(repo, name, config_text, LABELS, {k: Path(v) for k, v in files.items()}, manifest).version


def _spawn(tmp: Path, repo: Path, name: str, config_text: str, files: dict[str, str], pause: int | None = None) -> tuple[subprocess.Popen[str], Path]:
    spec = tmp / f"{name}-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps({"repository": str(repo), "name": name, "config_text": config_text, "labels": LABELS, "files": files}))
    marker = spec.with_suffix(".paused")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if pause is not None:
        env.update(SFT_ENGINE_PUBLISH_PAUSE_AT=str(pause), SFT_ENGINE_PUBLISH_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "tests.publish_worker", str(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker


def _wait_for(predicate, what: str, proc: subprocess.Popen[str], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the publisher exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _kill_at(tmp: Path, repo: Path, name: str, config_text: str, files: dict[str, str], point: int) -> str:
    proc, marker = _spawn(tmp, repo, name, config_text, files, pause=point)
    _wait_for(marker.exists, f"pause point {point}", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return marker.read_text().strip()


def assert_consistent(model_dir: Path) -> list[int]:
    """Every version complete; every live version built with the model-level config. Returns the live ones."""
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    versions = list_versions(model_dir)
    for v in versions:
        manifest = read_manifest(model_dir / str(v))
        assert manifest.version == v
        for file, entry in manifest.outputs.items():
            assert sha256_file(model_dir / str(v) / file) == entry["sha256"], f"{model_dir.name}/{v}/{file} is not what was staged"
    live = live_versions(cfg, versions)
    assert live, f"{model_dir.name}: no live version"
    for v in live:
        built = built_config(model_dir / str(v))
        assert built is not None
        built.ClearField("version_policy")
        served = parse_pbtxt((model_dir / "config.pbtxt").read_text())
        served.ClearField("version_policy")
        assert built == served, f"{model_dir.name} version {v} would be served under a config it was not built with"
    return live


def _ready(server: TritonServer, name: str, version: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{name}/versions/{version}/ready", timeout=5) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def _served_delay(server: TritonServer, name: str) -> int:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{name}/config", timeout=5) as resp:
        return int(json.loads(resp.read())["dynamic_batching"].get("max_queue_delay_microseconds", 0))


def _check_server(repos: dict[str, Path], expected: dict[str, list[int]], delays: dict[str, int]) -> None:
    """One real tritonserver over every repository (strict readiness: every model must load)."""
    first, *others = sorted(set(repos.values()))
    extra = [f"--model-repository={r}" for r in others]
    with TritonServer(ServerConfig(repository=first, http_port=0, grpc_port=0, metrics_port=0, startup_timeout_s=300, extra_args=extra)) as srv:
        for name, live in expected.items():
            versions = list_versions(repos[name] / name)
            assert [v for v in versions if _ready(srv, name, v)] == live, name
            assert _served_delay(srv, name) == delays[name], name


def test_sigkill_at_every_publishing_step_leaves_a_servable_repository(engine, tmp_path):
    """One repository per kill point (the next publish into a repository would finish the kill)."""
    files, text = engine
    repos: dict[str, Path] = {}
    for point in CHANGE_POINTS:
        name = f"change{point}"
        repos[name] = tmp_path / name / "model_repository"
        assert _publish_here(repos[name], name, _config(text, name), files) == 1
        where = _kill_at(tmp_path, repos[name], name, _config(text, name, delay_us=700), files, point)
        assert where.startswith(str(point))
    for point in NEW_POINTS:
        name = f"new{point}"
        repos[name] = tmp_path / name / "model_repository"
        repos[name].mkdir(parents=True)
        _kill_at(tmp_path, repos[name], name, _config(text, name, delay_us=300), files, point)

    # As the kills left it: each model consistent, and Triton serves exactly the live versions.
    expected: dict[str, list[int]] = {}
    delays: dict[str, int] = {}
    for point in CHANGE_POINTS:
        name = f"change{point}"
        expected[name] = assert_consistent(repos[name] / name)
        delays[name] = parse_pbtxt((repos[name] / name / "config.pbtxt").read_text()).dynamic_batching.max_queue_delay_microseconds
        if point <= 1:  # not yet applied
            assert list_versions(repos[name] / name) == [1] and delays[name] == 0
        if point >= 4:  # the new config is in, with its version
            assert expected[name] == [2] and delays[name] == 700
    for point in NEW_POINTS:
        name = f"new{point}"
        assert (repos[name] / name).exists() == (point >= 2)
        if point >= 2:
            expected[name], delays[name] = assert_consistent(repos[name] / name), 300
    assert expected["change2"] == [1] and expected["change3"] == [1], "the new version must not be live before its config"
    _check_server(repos, expected, delays)

    # The next writer finishes what was committed and drops the rest.
    for point in CHANGE_POINTS:
        name = f"change{point}"
        assert recover(repos[name]) == ([name] if 1 <= point <= 3 else [])  # steps left to do
        assert not list(staging_root(repos[name]).glob("build-*"))
        expected[name] = [2] if point >= 1 else [1]
        delays[name] = 700 if point >= 1 else 0
        assert assert_consistent(repos[name] / name) == expected[name], name
    for point in NEW_POINTS:
        name = f"new{point}"
        assert recover(repos[name]) == ([name] if point == 1 else [])
        assert not list(staging_root(repos[name]).glob("build-*"))
        assert (repos[name] / name).exists() == (point >= 1)
        if point >= 1:
            expected[name], delays[name] = assert_consistent(repos[name] / name), 300
        else:
            expected.pop(name, None)
    _check_server(repos, expected, delays)


def test_two_publishes_at_once_get_distinct_versions(engine, tmp_path):
    files, text = engine
    repo = tmp_path / "model_repository"
    _publish_here(repo, "tiny", _config(text, "tiny"), files)
    first, marker = _spawn(tmp_path, repo, "tiny", _config(text, "tiny", delay_us=100), files, pause=0)
    _wait_for(marker.exists, "the first publish to hold the lock", first)  # staged, version chosen, lock held
    second, _ = _spawn(tmp_path, repo, "tiny", _config(text, "tiny", delay_us=200), files)
    waited: list[str] = []

    def second_waits() -> bool:
        waited.append(second.stderr.readline())  # type: ignore[union-attr]
        return "waiting for another publish" in waited[-1]

    _wait_for(second_waits, "the second publish to wait for the lock", second)
    Path(str(marker) + ".go").write_text("")
    out_first, err_first = first.communicate(timeout=120)
    out_second, err_second = second.communicate(timeout=120)
    assert first.returncode == 0, err_first
    assert second.returncode == 0, err_second
    assert out_first.split() == ["published", "2"] and out_second.split() == ["published", "3"]
    assert list_versions(repo / "tiny") == [1, 2, 3]
    assert assert_consistent(repo / "tiny") == [3]
    assert [read_manifest(repo / "tiny" / str(v)).version for v in (2, 3)] == [2, 3]
    assert not list(staging_root(repo).glob("build-*"))


def test_stale_staging_is_removed_by_the_next_publish(engine, tmp_path):
    files, text = engine
    repo = tmp_path / "model_repository"
    _publish_here(repo, "tiny", _config(text, "tiny"), files)
    before = tree_digest(repo)
    _kill_at(tmp_path, repo, "tiny", _config(text, "tiny", delay_us=100), files, 0)  # staged, not committed
    assert tree_digest(repo) == before
    assert len(list(staging_root(repo).glob("build-*"))) == 1, "the killed publish left its staging directory"
    proc, _ = _spawn(tmp_path, repo, "tiny", _config(text, "tiny", delay_us=200), files)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["published", "2"]  # the killed one never went live
    assert not list(staging_root(repo).glob("build-*")), "the stale staging directory is still there"
    assert assert_consistent(repo / "tiny") == [2]


def test_a_config_change_that_would_reach_an_older_live_version_is_refused(engine, tmp_path):
    files, text = engine
    repo = tmp_path / "model_repository"
    _publish_here(repo, "two", _config(text, "two", num_versions=2), files)
    _publish_here(repo, "two", _config(text, "two", num_versions=2), files)  # same config: fine
    before = tree_digest(repo)
    with pytest.raises(RepositoryError, match="would also serve version 2, which was built with another one"):
        _publish_here(repo, "two", _config(text, "two", delay_us=500, num_versions=2), files)
    assert tree_digest(repo) == before
    assert assert_consistent(repo / "two") == [1, 2]
    # A version that predates the record is never served under a new config either.
    (repo / "two" / "2" / BUILT_CONFIG_NAME).unlink()
    with pytest.raises(RepositoryError, match="would also serve version 2"):
        _publish_here(repo, "two", _config(text, "two", delay_us=500, num_versions=2), files)
    # With the default policy only the newest is live: the config changes with its version.
    _publish_here(repo, "one", _config(text, "one"), files)
    assert _publish_here(repo, "one", _config(text, "one", delay_us=500), files) == 2
    assert assert_consistent(repo / "one") == [2]
