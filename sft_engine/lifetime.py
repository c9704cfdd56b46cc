"""Child processes that die with their parent: ``PR_SET_PDEATHSIG`` through ``preexec_fn``.

A child started with ``subprocess.Popen`` survives its parent's SIGKILL: it is
re-parented to init and keeps its ports and memory, so a supervisor that restarts the
parent (systemd, Kubernetes) then finds "port in use". Linux's
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set in the child between fork and exec, makes
the kernel kill the child when its parent dies. The parent may die before the child
sets it, so right after setting it the child checks that its parent is still the
process that started it and kills itself otherwise.

The signal fires when the *thread* that forked the child ends, not only the process:
start long-lived children from a thread that lives as long as they should (the main
thread, as every caller in sft-engine does).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that ties the child's life to this process; None where Linux's prctl is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: after fork only async-safe work
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
