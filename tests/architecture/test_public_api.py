"""The public API is pinned: a change to it must be deliberate."""

from __future__ import annotations

import subprocess
import sys

import sft_engine

PUBLIC = {
    "AsyncClient", "BuildConfig", "BuildResult", "Client", "ClientError", "ConfigError", "DataError", "DependencyError",
    "ExportError", "FinetuneConfig", "FinetuneResult", "LoadTestConfig", "LoadTestError", "LoadTestResult", "Prediction", "ModelError", "ParityError", "ParityReport", "Preprocessing", "PublishedVersion",
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


def test_result_types_and_errors_are_the_defining_objects():
    from sft_engine.client.errors import ClientError
    from sft_engine.client.predictions import Prediction
    from sft_engine.errors import DependencyError
    from sft_engine.finetune.trainer import FinetuneResult
    from sft_engine.loadtest.results import LoadTestResult

    assert (sft_engine.ClientError, sft_engine.DependencyError, sft_engine.Prediction) == (ClientError, DependencyError, Prediction)
    assert (sft_engine.FinetuneResult, sft_engine.LoadTestResult) == (FinetuneResult, LoadTestResult)
    assert sft_engine.finetune.FinetuneResult is FinetuneResult  # the sub-package's own lazy table


def test_a_lazy_name_is_imported_on_first_read_only():
    code = (
        "import sys, sft_engine\n"
        "before = 'sft_engine.client.errors' in sys.modules\n"
        "err = sft_engine.ClientError\n"
        "print(before, 'sft_engine.client.errors' in sys.modules, vars(sft_engine)['ClientError'] is err,"
        " 'LoadTestResult' in dir(sft_engine), 'sft_engine.loadtest' in sys.modules)\n"
        "try:\n    sft_engine.NoSuchName\nexcept AttributeError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["False True True True False", "module 'sft_engine' has no attribute 'NoSuchName'"]
