"""Declarative automation: derived datasets follow their inputs, partition by partition.

Dagster's `eager()` looks only at the latest time partition, so a backfill, a landing-file run
or a re-run of an old session would never reach the derived assets. The condition here looks at
every partition whose inputs were updated, and the sensor that evaluates it ships running, so
`make ui` needs no clicks.
"""

import dagster as dg

AUTOMATION_SENSOR = "marketpipe_automation"


def after_checked_inputs() -> dg.AutomationCondition:
    """True for each partition whose inputs were updated (any partition, not only the latest)
    since it was last requested, once their blocking checks passed and nothing upstream or of
    its own is still running. A run that materialized the partition together with its inputs
    (as `make demo` does) has already handled it."""
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("after_checked_inputs")


# Requests for several partitions of a single-run asset become one backfill, run as one run.
automation_sensor = dg.AutomationConditionSensorDefinition(
    AUTOMATION_SENSOR,
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Materializes indicators (and the warehouse, when configured) for every session "
    "whose prices were updated and passed their blocking checks.",
)
