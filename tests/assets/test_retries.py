"""Ingestion step retries (issue 5 item 5): the seed's capped schedule, provider failures only."""

import time

import dagster as dg
import pytest

from checks.errors import ConfigurationError
from marketpipe_assets.retries import StepRetrySchedule, is_retryable, provider_retries
from resources.providers.errors import (
    NotFound,
    ProviderDown,
    ProviderError,
    SchemaDrift,
    Unauthorized,
)
from resources.sources.base import SourceUnavailable

# Seconds-scale schedule: 0.2 s doubling, capped at 0.3 s, no jitter, so waits are exact.
FAST = {
    "MARKETPIPE_STEP_RETRIES": "3",  # the seed's count, whatever the suite's default
    "MARKETPIPE_STEP_RETRY_DELAY_SECONDS": "0.2",
    "MARKETPIPE_STEP_RETRY_MAX_SECONDS": "0.3",
    "MARKETPIPE_STEP_RETRY_JITTER_SECONDS": "0",
}


@pytest.fixture
def fast_retries(monkeypatch):
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)


def test_default_schedule_is_the_seeds(monkeypatch):
    for name in FAST:
        monkeypatch.delenv(name, raising=False)
    schedule = StepRetrySchedule.from_env()
    assert schedule.retries == 3
    exact = StepRetrySchedule(schedule.retries, schedule.delay, schedule.maximum, jitter=0)
    assert [exact.wait(n) for n in (1, 2, 3, 4)] == [300, 600, 1200, 1800]  # 5, 10, 20, cap 30
    # Jitter is added, then capped: never above 30 minutes, never below the plain schedule.
    waits = [schedule.wait(n) for n in (1, 2, 3, 4) for _ in range(50)]
    assert all(0 < w <= 1800 for w in waits) and min(waits) >= 300


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("MARKETPIPE_STEP_RETRY_DELAY_SECONDS", "five"), ("MARKETPIPE_STEP_RETRIES", "-1")],
)
def test_bad_setting_names_the_variable(monkeypatch, variable, raw):
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigurationError, match=variable):
        StepRetrySchedule.from_env()


def test_only_provider_outages_are_retryable():
    where = ("krx", "/svc/apis/sto/stk_bydd_trd", None)
    assert is_retryable(ProviderDown("krx: gave up after 4 attempts"))
    assert is_retryable(SourceUnavailable("every source in the chain failed"))
    assert is_retryable(ProviderError(*where, "HTTP 503"))
    for error in (
        Unauthorized(*where, "HTTP 401"),
        NotFound(*where, "HTTP 404"),
        SchemaDrift(*where, "no OutBlock_1"),
        ConfigurationError("KRX_API_KEY is not set"),
        dg.Failure("krx/universe has not been materialized"),
        ValueError("a bug"),
    ):
        assert not is_retryable(error), error


class Flaky:
    """Fails `failures` times with `error`, then succeeds; records when each attempt started."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.starts = failures, error, []

    def __call__(self):
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.failures:
            raise self.error


def run(asset: dg.AssetsDefinition, instance, *extra) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset, *extra], instance=instance, raise_on_error=False)


def retry_waits(instance, result) -> list[float]:
    events = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    return [e.dagster_event.event_specific_data.seconds_to_wait for e in events]


def test_fails_twice_then_succeeds_after_two_capped_waits(fast_retries, instance):
    flaky = Flaky(2, ProviderDown("krx /svc/apis/sto/stk_bydd_trd: HTTP 500 (gave up)"))

    @dg.asset
    @provider_retries
    def fetched() -> dg.MaterializeResult:
        flaky()
        return dg.MaterializeResult(metadata={"attempts": len(flaky.starts)})

    result = run(fetched, instance)

    assert result.success
    assert len(flaky.starts) == 3
    assert retry_waits(instance, result) == [0.2, 0.3]  # 0.2 doubled is 0.4, capped at 0.3
    gaps = [b - a for a, b in zip(flaky.starts, flaky.starts[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.3
    (materialization,) = result.asset_materializations_for_node("fetched")
    assert materialization.metadata["attempts"].value == 3


def test_always_failing_stops_after_three_retries_with_the_providers_error(fast_retries, instance):
    flaky = Flaky(99, ProviderDown("krx /svc/apis/sto/stk_bydd_trd: HTTP 500 (gave up)"))

    @dg.asset
    @provider_retries
    def fetched(context: dg.AssetExecutionContext):
        """A generator asset with a context, as daily_prices is."""
        flaky()
        yield dg.MaterializeResult()

    result = run(fetched, instance)

    assert not result.success
    assert len(flaky.starts) == 4  # the first try and three retries
    assert retry_waits(instance, result) == [0.2, 0.3, 0.3]
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert "HTTP 500" in error.message or (error.cause and "HTTP 500" in error.cause.message)


@pytest.mark.parametrize(
    "error",
    [
        ConfigurationError("MARKETPIPE_KRX_SOURCE='nope': unknown source(s)"),
        Unauthorized("krx", "/svc/apis/sto/stk_bydd_trd", None, "HTTP 401"),
        dg.Failure("krx/universe has not been materialized"),
    ],
    ids=type,
)
def test_configuration_and_client_errors_fail_at_once(fast_retries, instance, error):
    flaky = Flaky(99, error)

    @dg.asset
    @provider_retries
    def fetched():
        flaky()

    result = run(fetched, instance)

    assert not result.success
    assert len(flaky.starts) == 1
    assert retry_waits(instance, result) == []


def test_failed_blocking_check_is_not_retried(fast_retries, instance):
    starts = []

    @dg.asset(check_specs=[dg.AssetCheckSpec("completeness", asset="fetched", blocking=True)])
    @provider_retries
    def fetched():
        starts.append(1)
        yield dg.MaterializeResult(
            check_results=[dg.AssetCheckResult(check_name="completeness", passed=False)]
        )

    result = run(fetched, instance)

    assert not result.success
    assert len(starts) == 1
    assert retry_waits(instance, result) == []
