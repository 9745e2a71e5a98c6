"""`<market>/daily_prices` great_expectations check: GE re-counts what the rulebook quarantined.

The asset validates each batch with the polars rulebook and stores clean rows in the lake and
breaking rows in quarantine, each with the rules it broke (`violations`). Nothing is dropped, so
stored ∪ quarantined is the whole validated batch. This check reads both back for the partitions
being checked, runs the Great Expectations suite generated from the same rulebook on their union
and passes when GE finds, per rule, exactly as many breaking rows as the quarantine recorded. It
cross-checks the polars engine, the quarantine bookkeeping and the lake round trip; it warns
rather than blocks (the blocking checks are price_relationships and completeness). A quarantined
row without a trade_date is filed, date still null, under the run's last session, so GE sees it
as it arrived.
"""

import datetime as dt
import os
import warnings

import dagster as dg
import polars as pl

from checks.ge_suite import ge_version, ge_violation_counts
from checks.markets import partitions_def, sessions_between
from checks.rulebook import DAILY_PRICE_RULES
from checks.schemas import DAILY_PRICES, RAW, make_schema
from resources.lake import LakeResource

GREAT_EXPECTATIONS = "great_expectations"
DATASET = "daily_prices"


def recorded_violation_counts(quarantined: pl.DataFrame) -> dict[str, int]:
    """Per rule, the quarantined rows whose `violations` list names it."""
    return {
        rule.name: quarantined.filter(pl.col("violations").list.contains(rule.name)).height
        for rule in DAILY_PRICE_RULES
    }


def _read_quarantine_with_raw(
    lake: LakeResource, market: str, first: dt.date, last: dt.date
) -> pl.DataFrame:
    """The quarantine with its `raw` evidence; files written before `raw` existed (or by hand)
    lack it, and nothing of theirs was recorded as unparseable, so theirs reads as null."""
    evidence = make_schema({**DAILY_PRICES, RAW: pl.String})
    try:
        return lake.read_quarantine(DATASET, market, evidence, first=first, last=last)
    except (pl.exceptions.PolarsError, ValueError, KeyError):  # pyarrow's ArrowInvalid too
        plain = lake.read_quarantine(DATASET, market, DAILY_PRICES, first=first, last=last)
        return plain.with_columns(pl.lit(None, pl.String).alias(RAW))


def sessions_to_check(market: str, first: dt.date, last: dt.date) -> tuple[dt.date, dt.date, int]:
    """The sessions to cross-check, capped at the most recent MARKETPIPE_GE_CHECK_SESSIONS
    (default 20): a ten-year backfill would otherwise spend ~15 s in GE on rows the polars
    rules, the blocking gate, already covered. Returns first, last and the run's session count."""
    sessions = sessions_between(market, first, last)
    cap = int(os.environ.get("MARKETPIPE_GE_CHECK_SESSIONS", "20"))
    return max(first, sessions[-cap]) if len(sessions) > cap > 0 else first, last, len(sessions)


def ge_asset_check(market: str) -> dg.AssetChecksDefinition:
    key = dg.AssetKey([market, DATASET])

    def _great_expectations(
        context: dg.AssetCheckExecutionContext, lake: LakeResource
    ) -> dg.AssetCheckResult:
        window = context.partition_key_range
        first, last, run_sessions = sessions_to_check(
            market, dt.date.fromisoformat(window.start), dt.date.fromisoformat(window.end)
        )
        stored = lake.read_partitions(DATASET, market, DAILY_PRICES, first=first, last=last)
        quarantined = _read_quarantine_with_raw(lake, market, first, last)
        # `raw` (what did not parse) is the evidence the unparseable rules read; stored rows
        # parsed whole, so theirs is null.
        columns = [*stored.columns, RAW]
        batch = pl.concat(
            [stored.with_columns(pl.lit(None, pl.String).alias(RAW)), quarantined.select(columns)]
        )

        by_ge = ge_violation_counts(batch)
        recorded = recorded_violation_counts(quarantined)
        differ = {
            rule: {"great_expectations": by_ge[rule], "quarantine": recorded[rule]}
            for rule in recorded
            if by_ge[rule] != recorded[rule]
        }
        sessions = f"{first}" if first == last else f"{first}..{last}"
        return dg.AssetCheckResult(
            passed=not differ,
            description=(
                f"GE and the quarantine disagree on {sessions}: {differ}"
                if differ
                else f"same rule breaks as the quarantine on {sessions} "
                f"({len(quarantined)} of {len(batch)} rows quarantined)"
            ),
            metadata={
                "sessions": sessions,
                "run_sessions": run_sessions,
                "rows_checked": len(batch),
                "stored_rows": len(stored),
                "quarantined_rows": len(quarantined),
                "ge_violation_counts": by_ge,
                "quarantine_violation_counts": recorded,
                "disagreements": differ,
                "great_expectations_version": ge_version(),
            },
        )

    # Partitioned like the asset (partitions_def on asset checks is a preview in Dagster 1.13,
    # whose warning would print on every load of the definitions, hence the filter). Verified in
    # 1.13.27: a one-partition run gives the check that partition key, and its evaluation is
    # recorded against that partition; a range run as one run (CLI --partition-range, the
    # range tags) gives it the run's key range, and Dagster records that evaluation without a
    # partition. Either way the check reads exactly the sessions the asset just wrote.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=key,
            name=GREAT_EXPECTATIONS,
            blocking=False,
            partitions_def=partitions_def(market),
            # No automation of its own: every run of the prices (the UI's Materialize, the
            # daily job, the landing sensor, the demo) includes it.
            description="Great Expectations, running the suite generated from the rulebook on "
            "the stored and quarantined rows of the checked sessions, counts as many rows "
            "breaking each rule as the quarantine recorded.",
        )(_great_expectations)
