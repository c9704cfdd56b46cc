"""The first line of ``scripts/gpu_check.sh``: which targets actually ran on the GPU, and its exit code.

A GPU check that skipped everything must not look green. This reads the GPU tests' JUnit
XML and says, per target, whether its test passed on the GPU, failed, or did not run (and
why); the exit code is 0 only when something ran on the GPU and nothing failed:

    0  every target that ran passed (and, with --require-tensorrt, the tensorrt target was one);
       a target whose optional stack is missing (INT8 / FP8 without ModelOpt's ONNX pieces) is
       "not run", with the missing modules and how to install them, never a failure
    1  a test or the benchmark failed
    3  nothing ran on a GPU (no CUDA device, or every GPU test was skipped)
    4  --require-tensorrt, and the tensorrt target did not run

    python scripts/gpu_verdict.py --junit OUT/gpu_tests.xml --tests-rc 0 --bench-rc 0 [--require-tensorrt]
    python scripts/gpu_verdict.py --stopped "PyTorch sees no CUDA device" [--require-tensorrt]
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

#: target → the GPU test whose pass means it ran end to end on the GPU
TARGET_TESTS = (
    ("tensorrt", "test_tensorrt_build"),
    ("torchscript-gpu", "test_torchscript_gpu_build"),
    ("torch.export (tensorrt front half)", "test_torch_export_of_the_half_model"),
    ("tensorrt int8 (ModelOpt)", "test_tensorrt_int8_build"),
    ("tensorrt fp8 (ModelOpt)", "test_tensorrt_fp8_build"),
)


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """Test name → (passed | failed | skipped, message) from a pytest JUnit XML file."""
    out: dict[str, tuple[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "").split("[")[0]
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status, message = "failed", (child.get("message") or "").splitlines()[0] if child.get("message") else child.tag
            elif child.tag == "skipped" and status != "failed":
                status, message = "skipped", (child.get("message") or "").strip()
        out[name] = (status, message)
    return out


def verdict(results: dict[str, tuple[str, str]], tests_rc: int, bench_rc: int, require_tensorrt: bool) -> tuple[str, int]:
    """(first line, exit code) for the given test outcomes."""
    ran, not_run, failed = [], [], []
    for target, test in TARGET_TESTS:
        status, message = results.get(test, ("absent", "its test was not collected"))
        if status == "passed":
            ran.append(target)
        elif status == "failed":
            failed.append(f"{target} ({message[:120]})")
        else:  # a skip's reason in full where it names what to install (ModelOpt's missing pieces)
            reason = message.replace("Skipped: ", "")[:400] or status
            not_run.append(f"{target} ({reason})")
    other_failures = [t for t, (s, _) in results.items() if s == "failed" and t not in {test for _, test in TARGET_TESTS}]
    if tests_rc not in (0, 5) and not failed and not other_failures:
        other_failures.append(f"pytest exit {tests_rc}")
    if bench_rc:
        other_failures.append(f"benchmark exit {bench_rc}")
    parts = [f"ran on GPU: {', '.join(ran) or 'nothing'}"]
    if failed or other_failures:
        parts.append(f"failed: {', '.join(failed + other_failures)}")
    if not_run:
        parts.append(f"not run: {', '.join(not_run)}")
    if failed or other_failures:
        word, code = "FAIL", 1
    elif not ran:
        word, code = "NOTHING PROVEN", 3
    elif require_tensorrt and "tensorrt" not in ran:
        word, code = "FAIL (--require-tensorrt: the tensorrt target did not run)", 4
    else:
        word, code = "PASS", 0
    return f"gpu_check verdict: {word}; " + "; ".join(parts), code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path)
    parser.add_argument("--tests-rc", type=int, default=0)
    parser.add_argument("--bench-rc", type=int, default=0)
    parser.add_argument("--stopped", metavar="REASON", help="the check stopped before any GPU test: why")
    parser.add_argument("--require-tensorrt", action="store_true")
    args = parser.parse_args(argv)
    if args.stopped is not None or args.junit is None or not args.junit.is_file():
        reason = args.stopped or "no test results"
        suffix = " (--require-tensorrt: the tensorrt target did not run)" if args.require_tensorrt else ""
        print(f"gpu_check verdict: NOTHING PROVEN{suffix}; ran on GPU: nothing; not run: every target ({reason})")
        return 4 if args.require_tensorrt else 3
    line, code = verdict(outcomes(args.junit), args.tests_rc, args.bench_rc, args.require_tensorrt)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
