"""The package's requirements are ranges that keep an NGC container's torch; the exact CPU
install is constraints-cpu.txt; a torchvision built for another torch is one line.

The NGC-like versions below are the torch builds NVIDIA's containers carry (a pre-release
with a local part, e.g. the 25.10 container's ``2.8.0a0+5228986c39.nv25.6`` in the
server's docs/introduction/compatibility.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sft_engine.deps import minor_of, torch_pair_problem, torchvision_for_torch

ROOT = Path(__file__).resolve().parents[2]
NGC_TORCH = ["2.5.0a0+e000cf0ad9.nv24.10", "2.8.0a0+5228986c39.nv25.6", "2.9.0a0+145a3a7bda.nv25.10", "2.10.0a0+b4e4ee81d3.nv25.12"]
SETUP_EXTRAS = ("server", "onnx", "openvino", "int8", "modelopt", "loadtest", "test")

sys.path.insert(0, str(ROOT / "scripts"))
try:
    import lock_cpu
finally:
    sys.path.pop(0)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirement(name: str, extra: str | None = None) -> Requirement:
    texts = _project()["optional-dependencies"][extra] if extra else _project()["dependencies"]
    (req,) = [Requirement(t) for t in texts if canonicalize_name(Requirement(t).name) == canonicalize_name(name)]
    return req


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


# -- requirements are ranges that an NGC container's torch satisfies ------------------------

@pytest.mark.parametrize("version", NGC_TORCH + ["2.14.1"])
def test_torch_requirement_keeps_an_installed_ngc_torch(version):
    """pip keeps an installed distribution whose version is in the range, pre-releases included."""
    spec = _requirement("torch").specifier
    assert not any(s.operator in ("==", "===", "~=") for s in spec), f"torch is pinned: {spec}"
    assert spec.contains(Version(version), prereleases=True), (version, str(spec))


def test_torchvision_and_torch_tensorrt_are_ranges_too():
    assert _requirement("torchvision").specifier.contains(Version("0.23.0a0+nv25.6"), prereleases=True)
    trt = _requirement("torch-tensorrt", "tensorrt").specifier
    for version in ("2.5.0a0", "2.8.0a0+nv25.6", "2.13.0", "2.14.0"):
        assert trt.contains(Version(version), prereleases=True), (version, str(trt))


def test_lock_pins_every_requirement_setup_installs_within_its_range():
    lock = _lock()
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"
    for req in lock_cpu.project_requirements(SETUP_EXTRAS):
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is installed by scripts/setup.sh but not pinned in constraints-cpu.txt"
        assert req.specifier.contains(Version(lock[name]), prereleases=True), (str(req), lock[name])
    assert torch_pair_problem(lock["torch"], lock["torchvision"]) is None


def test_setup_installs_through_the_lock_with_the_extras_it_was_made_for():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    match = re.search(r"pip install .*-c constraints-cpu\.txt -e \"\.\[([a-z0-9,]+)\]\"", setup)
    assert match, "scripts/setup.sh must install with -c constraints-cpu.txt"
    assert tuple(match.group(1).split(",")) == SETUP_EXTRAS == lock_cpu.EXTRAS


def test_lock_matches_this_environment():
    """The shared install is exactly the lock (regenerate with scripts/lock_cpu.py when it moves)."""
    assert lock_cpu.main(["--check"]) == 0


#: NGC PyTorch containers as installed distributions (what pip sees inside them). 25.06 has NumPy 1;
#: 25.12 ships numpy 2.1.0 (ai-dynamo/aiperf#539) and torch 2.10.0a0+b4e4ee81d3 (PyTorch release notes 25.12)
#: pure-Python requirements the containers do not ship, which pip fetches from the index there;
#: the dry run is offline, so they stand in as installed (their own requirements are not at issue here)
PURE_PYTHON_FROM_THE_INDEX = {"timm": "1.0.31"}
NGC_STACKS = {
    "25.06": {"torch": "2.8.0a0+5228986c39.nv25.6", "torchvision": "0.23.0a0+28e8a7b3", "torch-tensorrt": "2.8.0a0",
              "numpy": "1.26.4", "tritonclient": "2.60.0", "protobuf": "4.24.4", "prometheus-client": "0.21.1",
              "safetensors": "0.5.3", "pillow": "11.2.1", "pyyaml": "6.0.2", "tqdm": "4.67.1", "tensorrt": "10.11.0.33",
              **PURE_PYTHON_FROM_THE_INDEX},
    "25.12": {"torch": "2.10.0a0+b4e4ee81d3.nv25.12", "torchvision": "0.25.0a0+6f5d8b3a", "torch-tensorrt": "2.10.0a0",
              "numpy": "2.1.0", "tritonclient": "2.64.0", "protobuf": "5.29.4", "prometheus-client": "0.21.1",
              "safetensors": "0.5.3", "pillow": "11.3.0", "pyyaml": "6.0.2", "tqdm": "4.67.1", "tensorrt": "10.14.1.48",
              **PURE_PYTHON_FROM_THE_INDEX},
}


def test_core_numpy_requirement_takes_numpy_2_and_only_the_server_extra_bounds_it():
    """The embedded server's stub needs NumPy 1 (its extra says so); nothing else may: NGC containers keep NumPy 2."""
    assert _requirement("numpy").specifier.contains(Version("2.1.0")), str(_requirement("numpy").specifier)
    assert _requirement("numpy").specifier.contains(Version("1.26.4"))
    assert not _requirement("numpy", "server").specifier.contains(Version("2.1.0"))
    optional = _project()["optional-dependencies"]
    bounded = [extra for extra, texts in optional.items() if extra != "server"
               for r in map(Requirement, texts) if r.name == "numpy" and not r.specifier.contains(Version("2.1.0"))]
    assert not bounded, f"extras other than server bound numpy below 2: {bounded}"


@pytest.mark.slow
@pytest.mark.parametrize("release", sorted(NGC_STACKS))
def test_pip_keeps_an_ngc_torch_when_resolving_the_requirements(tmp_path, release):
    """Offline: a throwaway environment that holds an NGC container's torch stack (as
    installed distributions) must satisfy every requirement without pip replacing one.
    The container's own versions are also constraints, as ``ngc``'s build command makes them."""
    env = tmp_path / "ngc"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    site = next((env / "lib").glob("python3*/site-packages"))
    installed = NGC_STACKS[release]
    for name, version in installed.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
    keep = tmp_path / "ngc-keep.txt"
    keep.write_text("".join(f"{n}=={installed[n]}\n" for n in ("torch", "torchvision", "torch-tensorrt", "tensorrt", "numpy")))
    requirements = [str(r) for r in lock_cpu.project_requirements(("tensorrt",))]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--dry-run", "--no-index",
         "--disable-pip-version-check", "-c", str(keep), *requirements],
        capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Would install" not in proc.stdout, proc.stdout
    assert "Requirement already satisfied: torch" in proc.stdout
    assert "Requirement already satisfied: numpy" in proc.stdout


# -- the torch / torchvision pair -----------------------------------------------------------

def test_torchvision_minor_follows_torch():
    assert torchvision_for_torch("2.14.1") == (0, 29)
    assert torchvision_for_torch("2.5.0a0+e000cf0ad9.nv24.10") == (0, 20)
    assert torchvision_for_torch("1.13.1") is None
    assert minor_of("0.23.0a0+28e8a7b3") == (0, 23) and minor_of("garbage") is None


def test_matching_pairs_pass_including_ngc_builds():
    assert torch_pair_problem("2.14.1", "0.29.1") is None
    assert torch_pair_problem("2.8.0a0+5228986c39.nv25.6", "0.23.0a0+28e8a7b3") is None
    assert torch_pair_problem(None, "0.29.1") is None and torch_pair_problem("2.14.1", None) is None


def test_mismatched_pair_is_one_line_naming_both_versions():
    problem = torch_pair_problem("2.8.0a0+5228986c39.nv25.6", "0.29.1")
    line = problem.one_line()
    assert "torchvision 0.29.1" in line and "torch 2.8.0a0+5228986c39.nv25.6" in line and "needs torchvision 0.23" in line
    assert "\n" not in line


def test_cli_with_a_mismatched_torchvision_fails_in_one_line(tmp_path):
    """A torchvision distribution for another torch, first on the path: exit 2, one line, no traceback."""
    fake = tmp_path / "site"
    info = fake / "torchvision-0.28.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "sft_engine.cli", "build", "--arch", "resnet18", "--num-classes", "3",
                           "--allow-random-weights", "--repository", str(tmp_path / "repo")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: torchvision 0.28.0 is not the release built for torch 2.14")
    assert not (tmp_path / "repo").exists()
