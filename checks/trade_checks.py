"""Trade rules and the asset checks of `<market>/trade_aggregates`.

TRADE_RULES_CHECK: the trades an hour was built from are valid (the collector's ingest rules:
positive price and size, inside their session give or take its tolerance; and one row per
trade_id); breaking trades are left out of the aggregates and quarantined with their rules.
AGGREGATES_RECONCILE: what was stored (read back from the lake) adds up to the trades it came
from, per symbol and hour, and the per-minute statistics add up to the hourly ones."""

from __future__ import annotations

import dagster as dg
import polars as pl

from .metadata import markdown_table
from .rulebook import Rule, UniqueTogether, Validated, validate
from .schemas import TRADES
from .specs import Check, check_specs, rules_check
from .trade_rules import TRADE_RULES as INGEST_RULES
from .trade_rules import check_trades

TRADE_RULES_CHECK = "trade_rules"
AGGREGATES_RECONCILE = "aggregates_reconcile"
# Sums of floats regrouped per minute and per hour differ in the last bits only.
RELATIVE_TOLERANCE = 1e-9

# The collector's ingest rules (required fields, positive price and size, inside the session
# give or take MARKETPIPE_TRADE_SESSION_TOLERANCE_MINUTES), re-checked on what reached the lake,
# plus the one only the lake can break: a trade_id stored twice with different contents.
UNIQUE_TRADE_ID = Rule(
    "unique_trade_id",
    "one trade per trade_id (identical re-flushed copies are dropped before this rule)",
    (UniqueTogether(("trade_id",)),),
)
TRADE_RULES: tuple[Rule, ...] = (*INGEST_RULES, UNIQUE_TRADE_ID)


def _repeated_ids(trades: pl.DataFrame) -> pl.Series:
    """True on rows whose trade_id may occur twice. Hashing first is ~10x faster than comparing
    10 million strings; the few candidates (and any hash collision) are settled exactly by the
    callers on the candidates alone."""
    hashes = trades["trade_id"].hash()
    if hashes.n_unique() == len(hashes):  # the usual case, 5x cheaper than is_duplicated
        return pl.repeat(False, len(hashes), eager=True, dtype=pl.Boolean)
    return hashes.is_duplicated()


def drop_exact_duplicates(trades: pl.DataFrame) -> pl.DataFrame:
    """A re-flushed batch repeats rows exactly: keep one. Copies that disagree stay, and the
    unique_trade_id rule quarantines them all (which one is right cannot be told)."""
    maybe = _repeated_ids(trades)
    if not maybe.any():
        return trades
    repeated = trades.filter(maybe).unique(subset=list(TRADES), keep="first", maintain_order=True)
    return pl.concat([trades.filter(~maybe), repeated])


def validate_trades(trades: pl.DataFrame, market: str) -> Validated:
    """Split (exact-duplicate-free) TRADES rows into clean and quarantined (with `violations`)."""
    as_spooled = trades.with_columns(
        received=pl.col("ts"), problem=pl.lit(None, pl.String), raw=pl.lit(None, pl.String)
    )
    ingest = check_trades(as_spooled, market)
    passed = ingest.clean.select(trades.columns)
    maybe = _repeated_ids(passed)
    unique = validate(passed.filter(maybe), (UNIQUE_TRADE_ID,))
    columns = [*trades.columns, "violations"]
    return Validated(
        clean=pl.concat([passed.filter(~maybe), unique.clean]),
        quarantined=pl.concat(
            [ingest.quarantined.select(columns), unique.quarantined.select(columns)]
        ),
        violation_counts={**ingest.violation_counts, **unique.violation_counts},
    )


TRADE_CHECKS = (
    # Not blocking: a bad trade is left out of the aggregates and quarantined, the hour goes on.
    rules_check(
        TRADE_RULES_CHECK,
        TRADE_RULES,
        "The hour's trades satisfy every rule ({rules}); breaking trades are left out of the "
        "aggregates and quarantined.",
        blocking=False,
    ),
    Check(
        AGGREGATES_RECONCILE,
        "Stored hourly and per-minute aggregates add up to the valid trades they came from: "
        "trades, volume and price x size per symbol and hour.",
        blocking=True,
    ),
)


def trade_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return check_specs(asset_key, TRADE_CHECKS)


def trade_rules_result(validated: Validated, duplicates_dropped: int) -> dg.AssetCheckResult:
    broken = {rule: n for rule, n in validated.violation_counts.items() if n}
    return dg.AssetCheckResult(
        check_name=TRADE_RULES_CHECK,
        passed=not broken,
        description=(
            f"{len(validated.quarantined)} trade(s) quarantined: {broken}"
            if broken
            else f"all {len(validated.clean)} trades pass"
        ),
        metadata={
            "valid_trades": len(validated.clean),
            "quarantined_trades": len(validated.quarantined),
            "quarantined_by_rule": validated.violation_counts,
            "exact_duplicates_dropped": duplicates_dropped,
            "quarantine_preview": dg.MetadataValue.md(markdown_table(validated.quarantined)),
        },
    )


def totals_by_symbol_hour(trades: pl.DataFrame) -> pl.DataFrame:
    """Straight from trades: the reference the stored aggregates must equal."""
    return (
        trades.lazy()
        .group_by("symbol", hour_start=pl.col("ts").dt.truncate("1h"))
        .agg(
            trades=pl.len().cast(pl.Int64),
            volume=pl.col("size").sum(),
            notional=(pl.col("price") * pl.col("size")).sum(),
        )
        .collect()
    )


def _stored_totals(frame: pl.DataFrame, time_column: str) -> pl.DataFrame:
    return frame.group_by("symbol", hour_start=pl.col(time_column).dt.truncate("1h")).agg(
        trades=pl.col("trades").sum().cast(pl.Int64),
        volume=pl.col("volume").sum(),
        notional=(pl.col("vwap") * pl.col("volume")).sum(),
    )


def _mismatches(expected: pl.DataFrame, stored: pl.DataFrame, what: str) -> pl.DataFrame:
    joined = expected.join(
        stored, on=["symbol", "hour_start"], how="full", coalesce=True, suffix="_stored"
    ).fill_null(0)
    off = (
        (pl.col("trades") != pl.col("trades_stored"))
        | (
            (pl.col("volume") - pl.col("volume_stored")).abs()
            > RELATIVE_TOLERANCE * pl.col("volume")
        )
        | (
            (pl.col("notional") - pl.col("notional_stored")).abs()
            > RELATIVE_TOLERANCE * pl.col("notional")
        )
    )
    return joined.filter(off).with_columns(dataset=pl.lit(what))


def reconcile_result(
    trades: pl.DataFrame, hourly: pl.DataFrame, minutes: pl.DataFrame
) -> dg.AssetCheckResult:
    """`hourly` and `minutes` as stored (read back); `trades` the valid trades aggregated."""
    expected = totals_by_symbol_hour(trades)
    off = pl.concat(
        [
            _mismatches(expected, _stored_totals(hourly, "hour_start"), "trade_aggregates"),
            _mismatches(expected, _stored_totals(minutes, "minute_start"), "trade_minutes"),
        ]
    )
    return dg.AssetCheckResult(
        check_name=AGGREGATES_RECONCILE,
        passed=off.is_empty(),
        description=(
            f"{len(off)} (dataset, symbol, hour) total(s) differ from the trades"
            if len(off)
            else f"{len(trades)} trades reconcile with {len(hourly)} hourly and "
            f"{len(minutes)} per-minute rows"
        ),
        metadata={
            "trades": len(trades),
            "volume": float(trades["size"].sum()) if len(trades) else 0.0,
            "mismatches": len(off),
            "mismatch_preview": dg.MetadataValue.md(markdown_table(off)),
        },
    )
