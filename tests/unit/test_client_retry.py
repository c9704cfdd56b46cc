"""Retries: only transient failures, only idempotent calls, bounded and backed off."""

from __future__ import annotations

import asyncio
import random

import pytest

from sft_engine.client.errors import BadInput, ModelNotFound, RequestTimeout, ServerUnavailable
from sft_engine.client.retry import RetryPolicy, acall_with_retry, call_with_retry
from sft_engine.errors import ConfigError


class Flaky:
    """Fails with ``errors`` in turn, then returns "ok"."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_failures_are_retried_with_growing_backoff():
    waits = []
    fn = Flaky(ServerUnavailable("down"), ServerUnavailable("down"))
    policy = RetryPolicy(attempts=3, initial_backoff_s=0.1, multiplier=2.0, jitter=0.0)
    assert call_with_retry(fn, policy, sleep=waits.append) == "ok"
    assert fn.calls == 3 and waits == [0.1, 0.2]


def test_gives_up_after_attempts_and_reports_them():
    fn = Flaky(*[ServerUnavailable("down")] * 5)
    with pytest.raises(ServerUnavailable) as info:
        call_with_retry(fn, RetryPolicy(attempts=3, jitter=0.0), sleep=lambda s: None)
    assert fn.calls == 3 and info.value.attempts == 3


@pytest.mark.parametrize("error", [BadInput("x"), ModelNotFound("x"), RequestTimeout("x")])
def test_permanent_failures_and_timeouts_are_not_retried(error):
    fn = Flaky(error)
    with pytest.raises(type(error)):
        call_with_retry(fn, RetryPolicy(attempts=5), sleep=lambda s: None)
    assert fn.calls == 1


def test_non_idempotent_calls_are_never_retried():
    fn = Flaky(ServerUnavailable("down"))
    with pytest.raises(ServerUnavailable):
        call_with_retry(fn, RetryPolicy(attempts=5), idempotent=False, sleep=lambda s: None)
    assert fn.calls == 1


def test_retry_on_is_configurable():
    fn = Flaky(RequestTimeout("slow"))
    policy = RetryPolicy(attempts=2, retry_on=(ServerUnavailable, RequestTimeout))
    assert call_with_retry(fn, policy, sleep=lambda s: None) == "ok"


def test_backoff_is_capped_and_jittered_within_bounds():
    policy = RetryPolicy(attempts=8, initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=3.0, jitter=0.2)
    delays = list(policy.delays(random.Random(1)))
    assert len(delays) == 7
    assert all(0.08 - 1e-9 <= d <= 0.6 + 1e-9 for d in delays)
    assert max(delays[3:]) <= 0.6 and min(delays[3:]) >= 0.4


def test_retries_argument_forms():
    assert RetryPolicy.of(0).attempts == 1
    assert RetryPolicy.of(None).attempts == 1
    assert RetryPolicy.of(3).attempts == 4
    policy = RetryPolicy(attempts=2)
    assert RetryPolicy.of(policy) is policy
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConfigError):
            RetryPolicy.of(bad)
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(jitter=1.0)


def test_async_twin_retries_the_same_way():
    waits = []

    async def sleep(s):
        waits.append(s)

    state = Flaky(ServerUnavailable("down"))

    async def fn():
        return state()

    result = asyncio.run(acall_with_retry(fn, RetryPolicy(attempts=2, initial_backoff_s=0.3, jitter=0.0), sleep=sleep))
    assert result == "ok" and waits == [0.3] and state.calls == 2


class FakeClock:
    """Time that moves only when the retry loop sleeps."""

    def __init__(self):
        self.now = 0.0
        self.waits = []

    def sleep(self, s):
        self.waits.append(s)
        self.now += s


def test_a_deadline_keeps_retrying_until_it_passes_and_no_wait_outlasts_it():
    clock = FakeClock()
    fn = Flaky(*[ServerUnavailable("refused")] * 1000)
    with pytest.raises(ServerUnavailable):
        call_with_retry(fn, RetryPolicy(attempts=10_000, initial_backoff_s=0.05, max_backoff_s=0.5, jitter=0.0, deadline_s=3.0),
                        sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.now == pytest.approx(3.0) and max(clock.waits) <= 0.5
    assert fn.calls == len(clock.waits) + 1 > 8  # far more than a plain retry count: it rode through the 3 s


def test_a_server_back_within_the_deadline_answers_the_call():
    clock = FakeClock()
    fn = Flaky(*[ServerUnavailable("refused")] * 12)
    assert call_with_retry(fn, RetryPolicy.until(10.0), sleep=clock.sleep, clock=lambda: clock.now) == "ok"
    assert fn.calls == 13 and clock.now < 10.0


def test_the_default_client_policy_rides_through_a_restart_and_retries_0_turns_it_off():
    from sft_engine.client.retry import DEFAULT_RETRY

    assert DEFAULT_RETRY.deadline_s == 10.0 and DEFAULT_RETRY.should_retry(ServerUnavailable("x"), idempotent=True)
    assert not DEFAULT_RETRY.should_retry(BadInput("x"), idempotent=True)
    assert RetryPolicy.of(0).attempts == 1 and RetryPolicy.of(0).deadline_s is None
    with pytest.raises(ConfigError):
        RetryPolicy(deadline_s=0)
