"""Child processes that die with their parent: ``PR_SET_PDEATHSIG``, set by a tiny exec shim.

A child started with ``subprocess.Popen`` survives its parent's SIGKILL: it is
re-parented to init and keeps its ports and memory, so a supervisor that restarts the
parent (systemd, Kubernetes) then finds "port in use". Linux's
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` makes the kernel kill the child when its parent
dies, and it is kept across ``execve``. The parent may die before the child sets it, so
right after setting it the child checks that its parent is still the process that
started it and kills itself otherwise.

Why a shim and not ``preexec_fn``: with ``preexec_fn`` CPython forks (no ``vfork``) and runs
the interpreter's at-fork hooks in the child between fork and exec, a process that may
hold gRPC's state; ``close_fds`` then closes descriptors under it. A load-test worker
started from a process with live gRPC channels died before reading its settings with
"Epoll1Poller encountered epoll_wait error: Bad file descriptor" (exit -6), the mark of
a poller whose epoll descriptor was closed. With the shim nothing runs between fork and
exec but CPython's own C code. ``bound_to_parent(argv)`` starts
``python -I -S -c SHIM <parent pid> argv...``: the shim sets the signal, checks its
parent and ``execvp``s ``argv`` in the same process (same pid, same file descriptors).

The signal fires when the *thread* that forked the child ends, not only the process:
start long-lived children from a thread that lives as long as they should (the main
thread, as every caller in sft-engine does).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

__all__ = ["bound_to_parent"]

#: the exec shim: PR_SET_PDEATHSIG (1) = SIGKILL, the parent check, then argv in this process
_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def bound_to_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` so that it runs as a child that the kernel kills when this process dies (unchanged off Linux)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _SHIM, str(os.getpid()), *argv]
