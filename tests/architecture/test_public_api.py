"""The public API is pinned: a change to it must be deliberate."""

from __future__ import annotations

import subprocess
import sys

import sft_engine

PUBLIC = {
    "AsyncClient", "BuildConfig", "BuildResult", "Client", "ConfigError", "DataError", "ExportError", "FinetuneConfig",
    "LoadTestConfig", "LoadTestError", "ModelError", "ParityError", "ParityReport", "Preprocessing", "PublishedVersion",
    "RepositoryError", "ServerConfig", "ServerError", "SftEngineError", "TargetUnavailable", "TritonServer", "__version__",
    "build", "build_model", "finetune", "list_archs", "load_weights", "run_loadtest",
}


def test_all_is_pinned_and_resolvable():
    assert set(sft_engine.__all__) == PUBLIC
    for name in sft_engine.__all__:
        assert getattr(sft_engine, name) is not None, name


def test_errors_share_one_root():
    for name in sft_engine.__all__:
        obj = getattr(sft_engine, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, sft_engine.SftEngineError), name


def test_import_is_cheap():
    code = "import sys, sft_engine; print('torch' in sys.modules, 'tritonclient' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
