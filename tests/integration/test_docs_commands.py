"""Every user-facing command of README.md and docs/*.md, run as written: a doc and the CLI cannot drift apart.

The commands are the ``sft-engine`` and ``curl`` lines (and the README's image-curl
script) of the fenced ``bash`` blocks, in document order, in one scratch directory
that holds the repository's ``build/`` and ``loadtest/`` files and the images the
examples name (``cat.png``, ``dog.png``, ``cat.jpg``). What is substituted, and why,
is listed in ``SUBSTITUTIONS``; what is not run, and why, in ``SKIPPED`` - only
commands that need a GPU, docker, kubectl or the network. The developer commands
(``./scripts/*.sh``, ``pytest``, ``pip``, ``python benchmarks/...``) are not the
product's commands: ``scripts/demo.sh`` is ``sft-engine demo`` (tests/integration/
test_demo.py), the benchmarks measure for minutes by design. A command written twice
(an overview and its own section) runs once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: (pattern in the command, reason): the only commands not run
SKIPPED = (
    ("--target tensorrt", "needs a GPU"),
    ("--gpus", "needs a GPU"),
    ("docker ", "needs docker"),
    ("127.0.0.1:8011", "needs docker (a second compose replica)"),
    ("kubectl", "needs kubectl"),
    ("helm ", "needs kubectl (helm)"),
    ("--pretrained DEFAULT", "needs the network (pretrained weights download)"),
    ("--dataset cifar10", "needs the network (CIFAR-10 download)"),
    ('"data": [ ... ]', "elided tensor data in the example"),
    ("header.json", "a header file the text builds by hand"),
    ("checkpoint.pth.tar", "a checkpoint trained elsewhere, which the reader brings (that path runs in test_zoo_serving.py)"),
)

#: (regex, replacement, why): applied to every command before it runs
SUBSTITUTIONS = (
    # the README's resnet50@224 build: the same flags on a resnet18@32 checkpoint with 10 classes (minutes -> seconds)
    (r"--arch resnet50 --weights model\.safetensors", "--arch resnet18 --weights model.safetensors", "small model"),
    (r"--input-size 224", "--input-size 32", "small model"),
    # tune's budget: seconds, not ten minutes; "tune ..." is the first tune line's arguments
    (r"sft-engine tune \.\.\.", "sft-engine tune --repository model_repository --model resnet18_demo --slo loadtest/capacity.toml --budget 600",
     "the elided arguments"),
    (r"--budget \d+", "--budget 1", "the current configuration only (always measured, two steps)"),
    (r"--duration 10\b", "--duration 3", "short steps"),
    (r"--epochs \d+", "--epochs 1", "one epoch: the command is checked, not the model"),
    (r"--synthetic-train-size \d+", "--synthetic-train-size 200", "one epoch: the command is checked, not the model"),
)


def _commands(path: Path) -> list[str]:
    """The user-facing commands of a document's bash blocks; a block that sets shell variables is one script."""
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines, pending = [], ""
        for line in joined.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            if pending.count("'") % 2 == 0 and not pending.rstrip().endswith("|"):
                lines.append(pending)
                pending = ""
        lines = [re.sub(r"\s{2,}#.*$", "", ln).strip() for ln in lines]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if any(re.match(r"^[A-Z_]+=", ln) for ln in lines):
            out.append("\n".join(lines))
            continue
        out += [ln for ln in lines if ln.startswith(("sft-engine ", "curl "))]
    return out


def _substitute(command: str, ports: dict[int, int]) -> str:
    for pattern, replacement, _why in SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    for default, port in ports.items():
        command = re.sub(rf"(127\.0\.0\.1|localhost):{default}\b", rf"\g<1>:{port}", command)
    # commands whose default --url is Triton's default port: the server's port instead
    if command.startswith(("sft-engine classify", "sft-engine rollout")) and "--url" not in command and ports:
        http = "--protocol http" in command or command.startswith("sft-engine rollout")
        command += f" --url 127.0.0.1:{ports[8000] if http else ports[8001]}"
    return command


def _skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIPPED if pattern in command), None)


def test_the_extraction_finds_the_commands_a_reader_runs():
    every = [c for doc in DOCS for c in _commands(doc)]
    assert any(c.startswith("sft-engine finetune") for c in every) and any(c.startswith("sft-engine tune") for c in every)
    assert any("IMG=cat.jpg" in c and "curl" in c for c in every)  # the image-curl script, as one
    assert not any(c.startswith(("python ", "pytest", "./scripts")) for c in every)
    skipped = {c: _skip_reason(c) for c in every if _skip_reason(c)}
    assert len(skipped) <= 10, skipped  # the list stays small


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from sft_engine.finetune import make_synthetic_images
    from sft_engine.models.registry import build_model

    work = tmp_path_factory.mktemp("docs")
    for name in ("build", "loadtest"):
        shutil.copytree(ROOT / name, work / name)
    images = make_synthetic_images(work / "gen", count=2, num_classes=4, image_size=32, seed=1)
    shutil.copy(images[0], work / "cat.png")
    shutil.copy(images[1], work / "dog.png")
    from PIL import Image

    Image.open(images[0]).convert("RGB").save(work / "cat.jpg", quality=90)
    # the README's `--weights model.safetensors` (a checkpoint of its own: 10 CIFAR-10 classes)
    from safetensors.torch import save_file

    save_file(build_model("resnet18", num_classes=10).state_dict(), str(work / "model.safetensors"))
    bin_dir = work / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "sft-engine"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m sft_engine.cli "$@"\n')
    shim.chmod(0o755)
    return work


def _run(command: str, work: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{work / 'bin'}:{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


def _serve_briefly(command: str, work: Path) -> str:
    """``serve`` runs until Ctrl-C: start it on free ports, wait for "press Ctrl-C", interrupt it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{work / 'bin'}:{os.environ['PATH']}")
    argv = command.split()[1:] + ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "sft_engine.cli", *argv], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if "press Ctrl-C" in line:
            proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    text = "".join(seen)
    assert code == 0 and "press Ctrl-C" in text, f"{command}\n{text[-3000:]}"
    return text


#: exit codes that are an answer, not a breakage: a load test's or tune's verdict on this busy machine
_VERDICT_CODES = {"sft-engine loadtest": {0, 1}, "sft-engine tune": {0, 1}}


def test_every_documented_command_runs(workdir):
    from sft_engine.server import ServerConfig, TritonServer
    from sft_engine.serving import model_names, models_to_load

    server = None
    ports: dict[int, int] = {}
    ran, skipped, starved = [], [], []
    try:
        for doc in DOCS:
            for raw in _commands(doc):
                reason = _skip_reason(raw)
                if reason:
                    skipped.append((doc.name, raw, reason))
                    continue
                if raw.startswith("sft-engine serve"):
                    out = _serve_briefly(_substitute(raw, {}), workdir)
                    if "--load-model" in raw:  # only what is loaded is printed, image models with it
                        assert "resnet18_demo_image" in out and "resnet50_cifar10/config" not in out, out
                    ran.append(raw)
                    continue
                needs_server = not raw.startswith(("sft-engine finetune", "sft-engine build", "sft-engine deploy"))
                if needs_server and server is None:
                    repo = workdir / "model_repository"
                    # the rollout example rolls out version 2: a second build of the README's model
                    assert _run("sft-engine build --from-finetune runs/ft --name resnet18_demo", workdir).returncode == 0
                    server = TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0,
                                                       model_control_mode="explicit",
                                                       load_models=models_to_load(repo, model_names(repo)))).start()
                    ports = {8000: server.config.http_port, 8001: server.config.grpc_port, 8002: server.config.metrics_port}
                command = _substitute(raw, ports)
                if command in ran:  # the same command in two places (an overview and its section): it ran already
                    skipped.append((doc.name, raw, "ran already, as written earlier in the docs"))
                    continue
                started = time.monotonic()
                result = _run(command, workdir)
                print(f"{time.monotonic() - started:6.1f} s  {command[:120]}")
                allowed = next((codes for prefix, codes in _VERDICT_CODES.items() if command.startswith(prefix)), {0})
                if "--find-capacity" in command:
                    allowed = {0}  # the shipped capacity.toml finds a capacity on this machine
                    if "other processes starved the generator" in result.stdout and result.returncode == 2:
                        # a host other work keeps 100% busy is no measurement; the run says so, and names --max-rate
                        assert "--max-rate" in result.stdout, result.stdout[-3000:]
                        starved.append(command)
                        continue
                    assert "capacity: none" not in result.stdout, result.stdout[-3000:]
                assert result.returncode in allowed, f"{doc.name}: {command}\nexit {result.returncode}\n{(result.stdout + result.stderr)[-3000:]}"
                assert "Traceback" not in result.stderr, result.stderr[-3000:]
                if command.startswith("curl"):
                    assert result.stdout.strip() and '"error"' not in result.stdout, f"{command}\n{result.stdout[-2000:]}"
                if command.startswith("sft-engine tune"):
                    assert not re.search(r"INVALID.*within the SLO", result.stdout), result.stdout
                ran.append(command)
    finally:
        if server is not None:
            server.stop()
    if starved:
        print(f"not judged, the host was starved by other work: {starved}")
    assert len(ran) >= 15, ran
    assert all(reason for _doc, _cmd, reason in skipped)
