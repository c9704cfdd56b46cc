#!/usr/bin/env python3
"""What does each fault cost the traffic? Inject it for real under load and print the figures.

Serves the integration tests' identity model (Python backend) with ``sft-engine serve`` and
keeps a steady stream of requests going (about 50/s, one after another), then:

* **stub**: SIGKILLs the model's Python-backend stub; prints the requests that failed,
  what they got, and the time from the kill to the first answer again (and serve's own
  "recovered" line);
* **restart**: SIGTERMs ``serve`` and starts it again at once on the same ports; one
  client with the default retry policy, one with ``retries=0``; prints what each lost and
  the gap.

    python benchmarks/bench_faults.py --repeat 3
"""

from __future__ import annotations

import argparse
import compileall
import os
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sft_engine.client import Client  # noqa: E402
from sft_engine.server import free_port  # noqa: E402

MODEL = "lt_identity"


def serve(repo: Path, ports: tuple[int, int, int]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "sft_engine.cli", "serve", "--repository", str(repo), "--http-port", str(ports[0]),
                             "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith(("press Ctrl-C", "error")):
            break
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    if not lines or not lines[-1].startswith("press Ctrl-C"):
        raise SystemExit("serve did not start: " + "".join(lines[-3:]))
    return proc, lines


class Load(threading.Thread):
    def __init__(self, url: str, **options: object) -> None:
        super().__init__(daemon=True)
        self.client = Client(url, protocol="http", model=MODEL, timeout=5.0, **options)  # type: ignore[arg-type]
        self.log: list[tuple[float, float, str | None]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        batch = np.ones((1, 16), np.float32)
        while not self.halt.is_set():
            start = time.monotonic()
            try:
                self.client.infer(batch)
                self.log.append((start, time.monotonic(), None))
            except Exception as exc:  # noqa: BLE001
                self.log.append((start, time.monotonic(), " ".join(str(exc).split())[:90]))
            time.sleep(0.02)

    def finish(self) -> None:
        self.halt.set()
        self.join(30)
        self.client.close()


def stubs(repo: Path) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "triton_python_backend_stub" in cmd and str(repo) in cmd:
                out.append(int(entry.name))
    return out


def wait_for(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def stub_fault(repo: Path) -> dict[str, object]:
    ports = (free_port(), free_port(), free_port())
    proc, lines = serve(repo, ports)
    load = Load(f"127.0.0.1:{ports[0]}", retries=0)
    load.start()
    try:
        wait_for(lambda: any(e is None for *_, e in load.log))
        time.sleep(1.0)
        killed = time.monotonic()
        os.kill(stubs(repo)[0], signal.SIGKILL)
        wait_for(lambda: any(e is None and s > killed for s, _, e in load.log) and any(ln.startswith("recovered") for ln in lines))
        time.sleep(1.0)
    finally:
        load.finish()
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    after = [(s, e) for s, _, e in load.log if s >= killed - 0.05]
    failed = [e for _, e in after if e]
    first_fail = min((s for s, e in after if e), default=killed)
    first_ok = min((s for s, e in after if e is None and s > first_fail), default=float("nan"))
    said = next((ln.strip() for ln in lines if ln.startswith("recovered")), "-")
    if os.environ.get("BENCH_FAULTS_DEBUG"):
        print("".join(lines[-8:]), file=sys.stderr)
    return {"sent": len(after), "failed": len(failed), "seen": failed[0] if failed else "-", "recover_s": first_ok - killed, "serve": said}


def restart_fault(repo: Path) -> dict[str, object]:
    ports = (free_port(), free_port(), free_port())
    first, _ = serve(repo, ports)
    url = f"127.0.0.1:{ports[0]}"
    patient, impatient = Load(url), Load(url, retries=0)
    patient.start()
    impatient.start()
    second = None
    try:
        wait_for(lambda: any(e is None for *_, e in patient.log))
        time.sleep(1.0)
        stopped_at = time.monotonic()
        first.send_signal(signal.SIGTERM)
        first.wait(60)
        second, _ = serve(repo, ports)
        wait_for(lambda: any(e for s, _, e in impatient.log if s > stopped_at)
                 and any(e is None and s > stopped_at + 0.5 for s, _, e in impatient.log))
        time.sleep(1.0)
    finally:
        patient.finish()
        impatient.finish()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(60)
    lost_p = [e for *_, e in patient.log if e]
    lost_i = [e for s, _, e in impatient.log if e]
    down = min((s for s, _, e in impatient.log if e and s >= stopped_at), default=stopped_at)
    back = min((s for s, _, e in impatient.log if e is None and s > down), default=float("nan"))
    slowest = max((end - s for s, end, e in patient.log if e is None), default=0.0)
    return {"lost_default": len(lost_p), "lost_no_retry": len(lost_i), "seen": lost_i[0] if lost_i else "-",
            "gap_s": back - stopped_at, "slowest_s": slowest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "model_repository"
        shutil.copytree(ROOT / "tests" / "integration" / "models" / MODEL, repo / MODEL)
        compileall.compile_dir(repo, quiet=1)  # the bytecode the stub writes at its first load
        old = time.time() - 3600  # as a deployed repository's files: older than the server's last load
        for path in [repo, *repo.rglob("*")]:
            os.utime(path, (old, old))
        stub_runs = [stub_fault(repo) for _ in range(args.repeat)]
        restart_runs = [restart_fault(repo) for _ in range(args.repeat)]
    print("| fault | run | requests lost | time to recover | what the client saw |")
    print("|---|---:|---:|---:|---|")
    for i, r in enumerate(stub_runs):
        print(f"| stub SIGKILL | {i} | {r['failed']} of {r['sent']} | {r['recover_s']:.2f} s | `{r['seen']}` ({r['serve']}) |")
    for i, r in enumerate(restart_runs):
        print(f"| serve restart | {i} | default retry {r['lost_default']}, retries=0 {r['lost_no_retry']} | {r['gap_s']:.2f} s "
              f"(slowest retried request {r['slowest_s']:.2f} s) | `{r['seen']}` |")
    print(f"median recovery: stub {statistics.median(r['recover_s'] for r in stub_runs):.2f} s, "
          f"restart {statistics.median(r['gap_s'] for r in restart_runs):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
