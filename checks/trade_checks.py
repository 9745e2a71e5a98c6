"""Trade rules and the asset checks of `<market>/trade_aggregates`.

TRADE_RULES_CHECK: the trades an hour was built from are valid (positive price and size, inside
their session give or take SESSION_TOLERANCE, one row per trade_id); breaking trades are left out
of the aggregates and quarantined with their rules. AGGREGATES_RECONCILE: what was stored (read
back from the lake) adds up to the trades it came from, per symbol and hour, and the per-minute
statistics add up to the hourly ones.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import polars as pl

from marketpipe_assets.markets import MARKETS, session_bounds
from marketpipe_assets.metadata import markdown_table
from marketpipe_assets.schemas import TRADES

from .rulebook import AtLeast, NotNull, Rule, UniqueTogether, Validated, WithinColumns, validate

TRADE_RULES_CHECK = "trade_rules"
AGGREGATES_RECONCILE = "aggregates_reconcile"
# Trades stamped just outside the session (the closing auction, clock skew between the venue and
# the feed) are still the session's; further out they are extended-hours trades.
SESSION_TOLERANCE = dt.timedelta(minutes=5)
# Sums of floats regrouped per minute and per hour differ in the last bits only.
RELATIVE_TOLERANCE = 1e-9

SESSION_OPEN, SESSION_CLOSE = "_session_open", "_session_close"

TRADE_RULES: tuple[Rule, ...] = (
    Rule(
        "required_fields",
        "symbol, ts, price, size and trade_id are present",
        tuple(NotNull(c) for c in ("symbol", "ts", "price", "size", "trade_id")),
    ),
    Rule("positive_price", "price > 0", (AtLeast("price", 0, strict=True),)),
    Rule("positive_size", "size > 0", (AtLeast("size", 0, strict=True),)),
    Rule(
        "within_session",
        f"session open - {SESSION_TOLERANCE} <= ts < session close + {SESSION_TOLERANCE}",
        (WithinColumns("ts", SESSION_OPEN, SESSION_CLOSE),),
    ),
    Rule(
        "unique_trade_id",
        "one trade per trade_id (identical re-flushed copies are dropped before this rule)",
        (UniqueTogether(("trade_id",)),),
    ),
)


def drop_exact_duplicates(trades: pl.DataFrame) -> pl.DataFrame:
    """A re-flushed batch repeats rows exactly: keep one. Copies that disagree stay, and the
    unique_trade_id rule quarantines them all (which one is right cannot be told)."""
    return trades.unique(subset=list(TRADES), keep="first", maintain_order=True)


def _local_day(market: str) -> pl.Expr:
    return pl.col("ts").dt.convert_time_zone(MARKETS[market].timezone).dt.date()


def _session_table(market: str, trades: pl.DataFrame) -> pl.DataFrame:
    """Open and close (widened by the tolerance) of the session each trade's local date is."""
    days = trades.select(_local_day(market).unique().drop_nulls().sort()).to_series()
    rows = []
    for day in days:
        try:
            opens, closes = session_bounds(market, day)
        except KeyError:  # not a session: the trades keep null bounds and break the rule
            continue
        rows.append((day, opens - SESSION_TOLERANCE, closes + SESSION_TOLERANCE))
    return pl.DataFrame(
        rows,
        schema={
            "_day": pl.Date,
            SESSION_OPEN: pl.Datetime("ms", "UTC"),
            SESSION_CLOSE: pl.Datetime("ms", "UTC"),
        },
        orient="row",
    )


def validate_trades(trades: pl.DataFrame, market: str) -> Validated:
    """Split (exact-duplicate-free) trades into clean and quarantined; TRADES columns kept."""
    with_bounds = trades.with_columns(_day=_local_day(market)).join(
        _session_table(market, trades), on="_day", how="left", maintain_order="left"
    )
    result = validate(with_bounds, TRADE_RULES)
    return Validated(
        clean=result.clean.select(trades.columns),
        quarantined=result.quarantined.select(*trades.columns, "violations"),
        violation_counts=result.violation_counts,
    )


def trade_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    rules = "; ".join(f"{r.name}: {r.description}" for r in TRADE_RULES)
    return [
        dg.AssetCheckSpec(
            TRADE_RULES_CHECK,
            asset=asset_key,
            description=f"The hour's trades satisfy every rule ({rules}); breaking trades are "
            "left out of the aggregates and quarantined.",
        ),
        dg.AssetCheckSpec(
            AGGREGATES_RECONCILE,
            asset=asset_key,
            blocking=True,
            description="Stored hourly and per-minute aggregates add up to the valid trades they "
            "came from: trades, volume and price x size per symbol and hour.",
        ),
    ]


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
    return trades.group_by("symbol", hour_start=pl.col("ts").dt.truncate("1h")).agg(
        trades=pl.len().cast(pl.Int64),
        volume=pl.col("size").sum(),
        notional=(pl.col("price") * pl.col("size")).sum(),
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
