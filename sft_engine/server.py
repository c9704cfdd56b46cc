"""The embedded tritonserver: the real Triton 2.51 binary shipped in the nvidia-pytriton wheel.

``TritonServer`` turns a typed ``ServerConfig`` into argv, prepares a Python-backend
directory whose stub matches the running interpreter (links in a cache folder, never
writes into site-packages), starts the process bound to loopback, waits until it is
ready and always tears it down (context manager, finalizer, signal handling in the CLI).

Why the environment is set explicitly: the backend stub links the system's
``libpython3.X`` and finds its packages through ``PATH``; putting this interpreter's
``bin/`` first and its ``LIBDIR`` on ``LD_LIBRARY_PATH`` makes the stub run the same
Python, with the same packages, as the process that started the server - also when
the virtual environment was never activated.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sft_engine.errors import ServerError
from sft_engine.lifetime import bound_to_parent
from sft_engine.triton.address import Address, is_loopback
from sft_engine.triton.control import HttpControl
from sft_engine.triton.security import ServerTls, redact, restricted_api_args

__all__ = ["ServerConfig", "TritonServer", "find_tritonserver", "free_port"]

LOGGER = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    """Whether something listens on (or holds bound) ``host:port``.

    ``SO_REUSEADDR`` as tritonserver itself binds: connections of a previous server in
    TIME-WAIT (a minute after a load test) do not count, so a supervisor's restart on
    the same ports succeeds; a live listener still makes the bind fail.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class ServerConfig:
    """Settings of one tritonserver process. Port 0 means "pick a free port"."""

    repository: Path
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    load_models: list[str] = field(default_factory=list)
    strict_readiness: bool = True
    exit_timeout_s: int = 10
    log_verbose: int = 0
    startup_timeout_s: float = 120.0
    extra_args: list[str] = field(default_factory=list)
    #: restricts the model-repository, shared-memory, statistics, trace and logging APIs to requests with this key
    admin_key: str | None = field(default=None, repr=False)
    #: gRPC over TLS (mutual with a client CA)
    tls: ServerTls | None = None
    #: False (the default): --disable-auto-complete-config, every config is used as written
    auto_complete_config: bool = False

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise ServerError(f"{name.replace('_', '-')} {port!r} is not a TCP port", hint="use 1..65535, or 0 for a free one")
        if self.model_control_mode != "none" and not self.admin_key and not is_loopback(self.host):
            raise ServerError(f"model-control mode {self.model_control_mode} on {self.host} would let anyone who reaches it load code",
                              hint="pass --admin-key-file FILE (created when absent), or serve on loopback")
        if self.tls is not None:
            self.tls.validate()


@dataclass(frozen=True)
class TritonInstall:
    """Where the embedded server's files are."""

    binary: Path
    backends: Path
    libs: Path
    stubs: Path


def find_tritonserver() -> TritonInstall:
    """Locate the tritonserver shipped by nvidia-pytriton without importing pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "tritonserver is not installed (the nvidia-pytriton package is missing)",
            hint="pip install 'sft-engine[server]', or serve with the NGC container: sft-engine serve --print-docker",
        )
    root = Path(list(spec.submodule_search_locations)[0])
    server = root / "tritonserver"
    binary = server / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServerError(f"the nvidia-pytriton package has no tritonserver binary at {binary.name}", hint="reinstall: pip install --force-reinstall nvidia-pytriton")
    return TritonInstall(binary=binary, backends=server / "backends", libs=root.parent / "nvidia_pytriton.libs", stubs=server / "python_backend_stubs")


def _cache_dir() -> Path:
    base = os.environ.get("SFT_ENGINE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sft-engine")
    return Path(base)


def prepare_backend_dir(install: TritonInstall) -> Path:
    """A backend directory whose Python backend has the stub for this interpreter.

    Links (not copies) keep the stub's ``$ORIGIN`` rpath pointing at the wheel's libs.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = install.stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(p.name for p in install.stubs.iterdir()) if install.stubs.is_dir() else []
        raise ServerError(f"the embedded tritonserver has no Python-backend stub for Python {version}", hint=f"use Python {', '.join(available)}")
    key = hashlib.sha256(f"{install.binary}|{version}".encode()).hexdigest()[:12]
    target = _cache_dir() / "triton-backends" / f"py{version}-{key}"
    python_dir = target / "python"
    if not (python_dir / "triton_python_backend_stub").exists():
        staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=_ensure(target.parent)))
        (staging / "python").mkdir()
        src = install.backends / "python"
        for item in src.iterdir():
            if item.name != "__pycache__":
                (staging / "python" / item.name).symlink_to(item)
        (staging / "python" / "triton_python_backend_stub").symlink_to(stub)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its directory is equivalent
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return target


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def server_environment(install: TritonInstall) -> dict[str, str]:
    """Environment for tritonserver so the stub runs this interpreter's Python and packages."""
    env = os.environ.copy()
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    lib_paths = [str(install.libs)]
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).exists():
        lib_paths.insert(0, libdir)
    if env.get("LD_LIBRARY_PATH"):
        lib_paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_paths)
    # The stub imports model.py with this interpreter's site-packages; the virtual env, if any:
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    return env


class TritonServer:
    """A running tritonserver; use as a context manager.

    >>> with TritonServer(ServerConfig(repository="model_repository", http_port=0, grpc_port=0, metrics_port=0)) as srv:
    ...     print(srv.http_url, srv.grpc_url)
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None
        self._finalizer: weakref.finalize | None = None

    # -- endpoints -----------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def argv(self, install: TritonInstall, backend_dir: Path) -> list[str]:
        """The tritonserver command line for this configuration."""
        cfg = self.config
        argv = [
            str(install.binary),
            f"--model-repository={cfg.repository.resolve()}",
            f"--backend-directory={backend_dir}",
            f"--http-address={cfg.host}",
            f"--http-port={cfg.http_port}",
            f"--grpc-address={cfg.host}",
            f"--grpc-port={cfg.grpc_port}",
            f"--metrics-address={cfg.host}",
            f"--metrics-port={cfg.metrics_port}",
            f"--model-control-mode={cfg.model_control_mode}",
            f"--strict-readiness={'true' if cfg.strict_readiness else 'false'}",
            f"--exit-timeout-secs={cfg.exit_timeout_s}",
            f"--log-verbose={cfg.log_verbose}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
        ]
        if not cfg.auto_complete_config:
            argv.append("--disable-auto-complete-config")
        if cfg.model_control_mode == "explicit":
            argv += [f"--load-model={name}" for name in cfg.load_models]
        if cfg.admin_key:
            argv += restricted_api_args(cfg.admin_key)
        if cfg.tls is not None:
            argv += cfg.tls.args()
        return argv + list(cfg.extra_args)

    # -- lifecycle -----------------------------------------------------------------
    def _resolve_ports(self) -> None:
        cfg = self.config
        taken = set()
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(cfg, name)
            if port == 0:
                while (port := free_port(cfg.host)) in taken:
                    pass
                setattr(cfg, name, port)
            elif port in taken or _port_in_use(cfg.host, port):
                flag = "--" + name.replace("_", "-")
                raise ServerError(f"port {port} on {cfg.host} is already in use", hint=f"stop what uses it, or pass {flag} with another port (0 picks a free one)")
            taken.add(port)

    def start(self) -> "TritonServer":
        """Start the server and wait until it reports ready."""
        cfg = self.config
        if not cfg.repository.is_dir():
            raise ServerError(f"model repository {cfg.repository} does not exist", hint="build a model first: sft-engine build ...")
        install = find_tritonserver()
        backend_dir = prepare_backend_dir(install)
        self._resolve_ports()
        argv = self.argv(install, backend_dir)
        fd, log_name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
        self._log_file = Path(log_name)
        LOGGER.info("starting %s", " ".join(shlex.quote(a) for a in redact(argv, cfg.admin_key)))
        with os.fdopen(fd, "wb") as log:
            self._process = subprocess.Popen(
                bound_to_parent(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=server_environment(install), start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _kill, self._process)
        try:
            self.wait_ready(cfg.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/v2/health/ready`` until it answers 200, the process dies, or time runs out."""
        deadline = time.monotonic() + timeout_s
        control = HttpControl(Address(self.config.host, self.config.http_port, "http"), timeout_s=1.0)
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                raise ServerError(f"tritonserver exited with code {code} while starting: {self.last_error()}", hint="read the server log with --log-verbose 1")
            if control.ready():
                return
            time.sleep(0.1)
        raise ServerError(f"tritonserver did not become ready within {timeout_s:.0f} s: {self.last_error()}", hint="check the model repository, or raise the startup timeout")

    def restart(self) -> "TritonServer":
        """Stop the server and start it again on the same ports (they were resolved at the first start)."""
        self.stop()
        if self._log_file:
            self._log_file.unlink(missing_ok=True)
        return self.start()

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def logs(self) -> str:
        """Everything the server has printed so far."""
        if self._log_file and self._log_file.exists():
            return self._log_file.read_text(errors="replace")
        return ""

    def last_error(self) -> str:
        """The most telling line of the log, for one-line error messages."""
        lines = [ln.strip() for ln in self.logs().splitlines() if ln.strip()]
        # "failed to load all models" names no model: the line that names the one that failed, and why, says more
        named = [ln for ln in lines if "failed to load '" in ln or "Poll failed for model directory '" in ln]
        if named:
            return named[-1][named[-1].find("] ") + 2 if "] " in named[-1] else 0:][:300]
        for line in reversed(lines):
            if line.startswith("E") or "error" in line.lower() or "failed" in line.lower():
                return line[:300]
        return lines[-1][:300] if lines else "no output"

    def stop(self) -> int | None:
        """SIGTERM, wait for Triton's own exit timeout, then SIGKILL. Idempotent."""
        proc = self._process
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=self.config.exit_timeout_s + 5)
            except subprocess.TimeoutExpired:
                _kill(proc)
                proc.wait(timeout=10)
        if self._finalizer:
            self._finalizer.detach()
        return proc.returncode

    def close(self) -> None:
        """Stop the server and remove its log file."""
        self.stop()
        if self._log_file:
            self._log_file.unlink(missing_ok=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
