"""Alerts on failed runs and failed blocking checks, and notices of successful ingestion.

Dagster 1.13 open source has no sensor over asset-check evaluations, but a blocking check that
fails with ERROR severity (completeness, price_relationships on <market>/daily_prices) fails its
step and so its run: the run-failure sensor sees it, reads the run's failed check evaluations
and sends a "check_failure" alert naming them, instead of a second alert for the same run.

A run fails only once its steps' retries are spent (retries.py), so an alert is "after retries
are exhausted"; a failed run that Dagster's run retries will re-launch (tag dagster/will_retry)
is left to its last attempt. Nothing is sent twice: the run-status sensors keep Dagster's cursor
over run events, and the failure sensor also skips a run whose failure-log row exists (a reset
cursor or a crashed tick). A channel that still fails after its attempts is recorded in the
failure log and raised, so the tick shows the error; the cursor moves on either way.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import dagster as dg

from resources.alerts import (
    Alert,
    AlertSettings,
    DeliveryError,
    Notifier,
    already_logged,
    record_failure,
)
from resources.lake import LakeResource

from .automation import RANGE_END_TAG, RANGE_START_TAG
from .datasets import names

WILL_RETRY_TAG = "dagster/will_retry"
PARTITION_TAG = "dagster/partition"
# Dagster's wrappers around the user's exception: the alert names the exception inside.
_WRAPPERS = ("DagsterExecutionStepExecutionError", "RetryRequested")


def _partition(run: dg.DagsterRun) -> str | None:
    if run.tags.get(PARTITION_TAG):
        return run.tags[PARTITION_TAG]
    first, last = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    return f"{first}...{last}" if first and last else None


def _error_text(error) -> str:
    """'ProviderDown: krx ...: HTTP 500 ...' from Dagster's serialised error chain."""
    while error.cls_name in _WRAPPERS and error.cause is not None:
        error = error.cause
    qualified, _, text = error.message.strip().partition(": ")
    return f"{qualified.rsplit('.', 1)[-1]}: {text}" if text else qualified


def _events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType):
    return [e.dagster_event for e in instance.all_logs(run_id, of_type=kind) if e.dagster_event]


def failure_alert(context: dg.RunFailureSensorContext, settings: AlertSettings) -> Alert:
    run, instance = context.dagster_run, context.instance
    failures = context.get_step_failure_events()
    planned = _events(instance, run.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    assets_of_step = defaultdict(set)
    for event in planned:
        assets_of_step[event.step_key].add(event.asset_key.to_user_string())
    checks = [
        {
            "asset": evaluation.asset_key.to_user_string(),
            "check": evaluation.check_name,
            "description": evaluation.description,
            "metadata": {
                k: v.value
                for k, v in evaluation.metadata.items()
                if isinstance(v.value, (str, int, float, bool, list))
            },
        }
        for event in _events(instance, run.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        if not (evaluation := event.event_specific_data).passed
        and evaluation.severity == dg.AssetCheckSeverity.ERROR
    ]
    steps = [e.step_key for e in failures if e.step_key]
    assets = sorted({a for step in steps for a in assets_of_step.get(step, ())})
    errors = [_error_text(e.step_failure_data.error) for e in failures if e.step_failure_data]
    record = instance.get_run_record_by_id(run.run_id)
    ended = record.end_time if record and record.end_time else None
    return Alert(
        kind="check_failure" if checks else "run_failure",
        run_id=run.run_id,
        job=run.job_name,
        assets=assets or sorted({c["asset"] for c in checks}),
        partition=_partition(run),
        step=", ".join(steps) or None,
        error="\n".join(errors) or (context.failure_event.message or "the run failed"),
        ui_url=settings.run_url(run.run_id),
        occurred_at=dt.datetime.fromtimestamp(ended, dt.UTC) if ended else dt.datetime.now(dt.UTC),
        checks=checks,
    )


@dg.run_failure_sensor(
    name="failure_alerts",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Each failed run (after its retries): one webhook POST, one email, one row in "
    "the failure log, naming run, assets, partition, error, failed checks and a UI link.",
)
def failure_alerts(context: dg.RunFailureSensorContext, lake: LakeResource):
    run = context.dagster_run
    if run.tags.get(WILL_RETRY_TAG) == "true":
        context.log.info(f"run {run.run_id} failed but will be retried: alert on its last attempt")
        return
    settings = AlertSettings.from_env()
    notifier = Notifier(settings, context.log)
    alert = notifier.scrub(failure_alert(context, settings))
    if already_logged(lake, alert):
        context.log.info(f"run {run.run_id} is already in the failure log: not alerting again")
        return
    delivered, undelivered = notifier.deliver(alert)
    path = record_failure(lake, alert, delivered, undelivered)
    context.log.info(f"{alert.subject()}: sent by {delivered or 'no channel'}, logged in {path}")
    if undelivered:
        raise DeliveryError(
            f"alert for run {run.run_id} undelivered: " + "; ".join(undelivered.values())
        )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="ingestion_notifications",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Each successful run that stored ingested data is POSTed as JSON to "
    "MARKETPIPE_NOTIFY_URL when it is set (seed 003).",
)
def ingestion_notifications(context: dg.RunStatusSensorContext):
    settings = AlertSettings.from_env()
    if not settings.notify_url:
        return
    run = context.dagster_run
    stored: dict[str, dict] = {}
    ingested = names(ingested=True)
    for event in _events(context.instance, run.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = event.event_specific_data.materialization
        key = materialization.asset_key
        if key.path[-1] not in ingested:
            continue
        entry = stored.setdefault(key.to_user_string(), {"partitions": 0, "rows": 0})
        entry["partitions"] += 1
        rows = materialization.metadata.get("rows")
        entry["rows"] += int(rows.value) if rows is not None else 0
    if not stored:
        return
    record = context.instance.get_run_record_by_id(run.run_id)
    payload = {
        "event": "ingestion_succeeded",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": _partition(run),
        "assets": stored,
        "ui_url": settings.run_url(run.run_id),
        "finished_at": dt.datetime.fromtimestamp(record.end_time, dt.UTC).isoformat()
        if record and record.end_time
        else None,
    }
    Notifier(settings, context.log).post_json("notify", settings.notify_url, payload)


def alert_sensors() -> list[dg.SensorDefinition]:
    """The sensors for definitions.py. A bad alert setting fails here, when definitions load."""
    AlertSettings.from_env()
    return [failure_alerts, ingestion_notifications]
