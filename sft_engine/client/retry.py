"""Retries with exponential backoff, for transient failures of idempotent calls only.

Why so narrow: retrying is only safe when sending the same request twice cannot
change the outcome (health checks, metadata, and inference on a stateless
classifier), and only useful when the failure may go away by itself (the server is
restarting or briefly unreachable). A timeout is not retried by default - the
caller's time budget is already spent - and a bad input, an unknown model or a
model error would fail again identically.

A server restarted by its supervisor is unreachable for a few seconds (connection
refused, then UNAVAILABLE while it loads): ``deadline_s`` keeps retrying such failures,
with capped backoff, until that much time has passed since the first try, so a client
rides through a restart and loses only requests whose deadline passed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator, TypeVar

from sft_engine.client.errors import ClientError, ServerUnavailable
from sft_engine.errors import ConfigError

__all__ = ["RetryPolicy", "DEFAULT_RETRY", "call_with_retry", "acall_with_retry"]

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``attempts`` counts the first try (1 = never retry). The n-th retry waits
    ``initial_backoff_s * multiplier**(n-1)`` seconds, capped at ``max_backoff_s``,
    each wait stretched or shrunk by up to ``jitter`` (a fraction) so that many clients
    restarting together do not retry in lockstep. ``retry_on`` lists the error
    classes worth retrying. ``deadline_s`` (None: no limit but ``attempts``): no retry
    starts later than this many seconds after the first try, and no wait outlasts it.
    """

    attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.1
    retry_on: tuple[type[ClientError], ...] = (ServerUnavailable,)
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"retry attempts must be an integer >= 1, got {self.attempts!r}", hint="use 1 to never retry")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ConfigError("retry backoff must be >= 0 with a multiplier >= 1", hint="e.g. RetryPolicy(initial_backoff_s=0.05, multiplier=2)")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ConfigError(f"retry deadline must be > 0 seconds, got {self.deadline_s!r}", hint="e.g. deadline_s=10, or None")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"retry jitter must be in [0, 1), got {self.jitter!r}", hint="e.g. 0.1")

    @classmethod
    def of(cls, retries: "int | RetryPolicy | None") -> "RetryPolicy":
        """``retries`` as given to a client: a number of retries (0 = none) or a policy."""
        if isinstance(retries, RetryPolicy):
            return retries
        if retries is None:
            return cls(attempts=1)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be an integer >= 0 or a RetryPolicy, got {retries!r}", hint="e.g. retries=2")
        return cls(attempts=retries + 1)

    @classmethod
    def until(cls, deadline_s: float, max_backoff_s: float = 0.5) -> "RetryPolicy":
        """Retry transient failures for up to ``deadline_s`` seconds (e.g. through a server restart)."""
        return cls(attempts=1_000_000, initial_backoff_s=0.05, max_backoff_s=max_backoff_s, deadline_s=deadline_s)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before retry 1, 2, ... (``attempts - 1`` of them)."""
        rng = rng or random
        delay = self.initial_backoff_s
        for _ in range(self.attempts - 1):
            capped = min(delay, self.max_backoff_s)
            yield max(0.0, capped * (1.0 + self.jitter * (2.0 * rng.random() - 1.0)))
            delay *= self.multiplier

    def should_retry(self, exc: BaseException, idempotent: bool) -> bool:
        return idempotent and isinstance(exc, self.retry_on)

    def within_deadline(self, delay: float | None, started: float, now: float) -> float | None:
        """``delay`` shortened to the time left before the deadline; None when none is left."""
        if delay is None or self.deadline_s is None:
            return delay
        left = started + self.deadline_s - now
        return min(delay, left) if left > 0 else None


#: what a client does unless told otherwise: ride through a restart of up to 10 s (retries=0 turns it off)
DEFAULT_RETRY = RetryPolicy.until(10.0)


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, *, idempotent: bool = True, what: str = "call",
                    sleep: Callable[[float], None] = time.sleep, already_failed: ClientError | None = None,
                    clock: Callable[[], float] = time.monotonic) -> T:
    """``fn()``, retried per ``policy``; the last error carries ``attempts``.

    ``already_failed``: the error of a first try the caller made itself (it counts as attempt 1).
    """
    delays = policy.delays()
    started = clock()
    attempt = 1
    while True:
        try:
            if already_failed is not None:
                failed, already_failed = already_failed, None
                raise failed
            return fn()
        except ClientError as exc:
            exc.attempts = attempt
            delay = policy.within_deadline(next(delays, None) if policy.should_retry(exc, idempotent) else None, started, clock())
            if delay is None:
                raise
            LOGGER.debug("%s failed (%s), retry %d in %.3f s", what, exc.__class__.__name__, attempt, delay)
            sleep(delay)
            attempt += 1


async def acall_with_retry(fn: Callable[[], Awaitable[T]], policy: RetryPolicy, *, idempotent: bool = True, what: str = "call",
                           sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """The asyncio twin of ``call_with_retry``."""
    delays = policy.delays()
    started = clock()
    attempt = 1
    while True:
        try:
            return await fn()
        except ClientError as exc:
            exc.attempts = attempt
            delay = policy.within_deadline(next(delays, None) if policy.should_retry(exc, idempotent) else None, started, clock())
            if delay is None:
                raise
            LOGGER.debug("%s failed (%s), retry %d in %.3f s", what, exc.__class__.__name__, attempt, delay)
            await sleep(delay)
            attempt += 1
