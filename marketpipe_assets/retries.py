"""Step retries for ingestion (issue 5 item 5): the seed's schedule, only for provider failures.

Seed 000 retries a failed fetch 3 times, 5 minutes after the first failure, doubling, never more
than 30 minutes apart (5, 10, 20 min). Dagster's `RetryPolicy` cannot say that: its exponential
backoff is `(2**n - 1) * delay` (5, 15, 35 min), it has no cap, and it retries every exception,
so a wrong API key or a failed data rule would wait 55 minutes before alerting. So ingestion
functions are wrapped with `provider_retries`, which raises `dg.RetryRequested` with our own
capped wait, and only for errors a later attempt can fix:

- `SourceUnavailable` (provider down after the HTTP layer's own retries, circuit open, a whole
  fallback chain failing) and `ProviderError`s marked `retryable`;
- never `ConfigurationError`, non-retryable provider errors (401, 404, 4xx, schema drift),
  `dg.Failure` or any other exception; blocking check failures are raised by Dagster after the
  function returns, outside the wrapper, so failed data rules are never retried either.

Settings: MARKETPIPE_STEP_RETRIES (3), MARKETPIPE_STEP_RETRY_DELAY_SECONDS (300),
MARKETPIPE_STEP_RETRY_MAX_SECONDS (1800), MARKETPIPE_STEP_RETRY_JITTER_SECONDS (30; added to each
wait, then capped, so two markets failing together do not retry in lockstep). They are read
when a step fails, so tests and deployments can shorten them without reloading definitions.
"""

from __future__ import annotations

import functools
import inspect
import os
import random
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg

from checks.errors import ConfigurationError
from resources.providers.errors import ProviderError
from resources.providers.http import seconds_from_env
from resources.sources.base import SourceUnavailable

RETRIES_VARIABLE = "MARKETPIPE_STEP_RETRIES"
DELAY_VARIABLE = "MARKETPIPE_STEP_RETRY_DELAY_SECONDS"
MAX_VARIABLE = "MARKETPIPE_STEP_RETRY_MAX_SECONDS"
JITTER_VARIABLE = "MARKETPIPE_STEP_RETRY_JITTER_SECONDS"


@dataclass(frozen=True)
class StepRetrySchedule:
    """Wait before retry n (1, 2, ...): min(maximum, delay * 2**(n-1) + uniform(0, jitter))."""

    retries: int = 3
    delay: float = 300.0
    maximum: float = 1800.0
    jitter: float = 30.0

    @classmethod
    def from_env(cls) -> StepRetrySchedule:
        raw = os.environ.get(RETRIES_VARIABLE, "").strip()
        try:
            retries = int(raw) if raw else cls.retries
        except ValueError:
            retries = -1
        if retries < 0:
            raise ConfigurationError(
                f"{RETRIES_VARIABLE}={raw!r}: use a whole number of retries >= 0, "
                f"e.g. {cls.retries}, or unset it"
            )
        return cls(
            retries=retries,
            delay=seconds_from_env(DELAY_VARIABLE, cls.delay),
            maximum=seconds_from_env(MAX_VARIABLE, cls.maximum),
            jitter=seconds_from_env(JITTER_VARIABLE, cls.jitter),
        )

    def wait(self, retry: int) -> float:
        return min(self.maximum, self.delay * 2 ** (retry - 1) + random.uniform(0, self.jitter))


def is_retryable(error: BaseException) -> bool:
    """Whether a later attempt of the step can succeed: a provider outage, not a wrong setting.

    A `retryable` attribute on the error decides when it has one (ProviderError's subclasses
    say so); a SourceUnavailable without one is "cannot serve now" (base.py), so it is retried.
    """
    if isinstance(error, ConfigurationError):
        return False
    if isinstance(error, (SourceUnavailable, ProviderError)):
        return bool(getattr(error, "retryable", True))
    return False


@contextmanager
def _retry_provider_errors():
    try:
        yield
    except Exception as error:
        if not is_retryable(error):
            raise
        schedule = StepRetrySchedule.from_env()
        context = dg.AssetExecutionContext.get()
        retry = context.retry_number + 1
        if retry > schedule.retries:
            # The step fails with the provider's own error (what the UI and the alert show).
            context.log.error(f"giving up after {schedule.retries} retries")
            raise
        wait = schedule.wait(retry)
        context.log.warning(
            f"{type(error).__name__}: {error}; retry {retry} of {schedule.retries} in {wait:.1f} s"
        )
        raise dg.RetryRequested(max_retries=schedule.retries, seconds_to_wait=wait) from error


def provider_retries(fn: Callable) -> Callable:
    """Retry an ingestion asset's function on provider failures (see the module docstring).

    Goes between `@dg.asset(...)` and the `def`; plain and generator functions both work, and
    Dagster still sees the function's own parameters (functools.wraps keeps its signature).
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            with _retry_provider_errors():
                return (yield from fn(*args, **kwargs))

        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        with _retry_provider_errors():
            return fn(*args, **kwargs)

    return function
