"""Order-book rules as data and the checks of `<market>/order_books`.

A snapshot is the ten rows of one (symbol, snapshot_ts). Its rules are about the whole book
(best bid below best ask, each side's levels strictly ordered, ten levels), so when one row of
a snapshot breaks a rule the whole snapshot is quarantined: a book with a bad level cannot be
trusted at any level.

Blocking: ORDER_BOOK_RULES_CHECK (no stored snapshot breaks a rule) and SNAPSHOT_COVERAGE
(captured snapshots against active symbols x capture slots of the session).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import cast

import dagster as dg
import numpy as np
import polars as pl

from .intraday_checks import SESSION_CLOSE, SESSION_OPEN, session_table
from .markets import capture_slots
from .metadata import markdown_table
from .price_checks import completeness_by_session, rules_result
from .rulebook import (
    COMPLETENESS_THRESHOLD,
    AtLeast,
    NotNull,
    Rule,
    Validated,
    WithinColumns,
    finite_rule,
    in_columns_of,
    named_rule,
    validate,
)
from .schemas import ORDER_BOOK_LEVELS
from .specs import Check, check_specs, rules_check

ORDER_BOOK_RULES_CHECK = "order_book_rules"
SNAPSHOT_COVERAGE = "snapshot_coverage"
BLOCKING_CHECKS = (ORDER_BOOK_RULES_CHECK, SNAPSHOT_COVERAGE)
COVERAGE_THRESHOLD = COMPLETENESS_THRESHOLD

SNAPSHOT = "_snapshot"  # consecutive id of (symbol, snapshot_ts) in the sorted frame
ROWS, LEVELS = "_snapshot_rows", "_snapshot_levels"  # rows and distinct levels of the snapshot
KEY = ("symbol", "snapshot_ts")


@dataclass(frozen=True)
class LevelSet:
    """Exactly levels 1..n, once each (a missing or repeated level breaks it)."""

    levels: int

    def broken(self) -> pl.Expr:
        outside = ~pl.col("level").is_between(1, self.levels)
        miscounted = (pl.col(ROWS) != self.levels) | (pl.col(LEVELS) != self.levels)
        return (outside | miscounted).fill_null(True)


@dataclass(frozen=True)
class NotCrossed:
    """At level 1 the best bid is below the best ask (a one-sided book is not crossed)."""

    def broken(self) -> pl.Expr:
        crossed = pl.col("bid_price") >= pl.col("ask_price")
        return ((pl.col("level") == 1) & crossed).fill_null(False)


@dataclass(frozen=True)
class StrictlyOrdered:
    """Prices move away from the touch level by level: bids strictly down, asks strictly up.
    An empty level may only be followed by empty levels (no quoted level after a gap). Needs the
    frame sorted by (symbol, snapshot_ts, level)."""

    column: str
    descending: bool

    def broken(self) -> pl.Expr:
        price = pl.col(self.column)
        same = pl.col(SNAPSHOT) == pl.col(SNAPSHOT).shift(1)
        previous = price.shift(1)
        wrong_way = previous <= price if self.descending else previous >= price
        after_gap = previous.is_null() & price.is_not_null()
        return (same & (wrong_way.fill_null(False) | after_gap)).fill_null(False)


@dataclass(frozen=True)
class EmptyMeansZero:
    """An empty level has no price and size 0; a quoted level has a price and a size > 0."""

    price: str
    size: str

    def broken(self) -> pl.Expr:
        empty = pl.col(self.price).is_null()
        return (empty != (pl.col(self.size) == 0)).fill_null(False)


REQUIRED = ("symbol", "snapshot_ts", "level", "trade_date", "bid_size", "ask_size")

# Each rule is checked on rows; validate_order_books then quarantines the whole snapshot of any
# row that breaks one.
ORDER_BOOK_RULES: tuple[Rule, ...] = (
    Rule(
        "required_fields",
        "symbol, snapshot_ts, level, session and both sizes are present",
        tuple(map(NotNull, REQUIRED)),
    ),
    Rule(
        "ten_levels",
        f"levels 1..{ORDER_BOOK_LEVELS} each once per snapshot (empty ones explicitly)",
        (LevelSet(ORDER_BOOK_LEVELS),),
    ),
    Rule("not_crossed", "best bid < best ask", (NotCrossed(),)),
    Rule(
        "levels_ordered",
        "bid prices strictly fall and ask prices strictly rise from level 1, no gaps",
        (StrictlyOrdered("bid_price", True), StrictlyOrdered("ask_price", False)),
    ),
    named_rule("symbol"),
    finite_rule("finite_prices", ("bid_price", "ask_price")),
    Rule(
        "positive_prices",
        "quoted bid and ask prices are > 0",
        (AtLeast("bid_price", 0, strict=True), AtLeast("ask_price", 0, strict=True)),
    ),
    Rule(
        "non_negative_sizes",
        "bid and ask sizes are >= 0",
        (AtLeast("bid_size", 0, strict=False), AtLeast("ask_size", 0, strict=False)),
    ),
    Rule(
        "empty_levels_consistent",
        "an empty level has null prices and zero sizes, a quoted one a size > 0",
        (EmptyMeansZero("bid_price", "bid_size"), EmptyMeansZero("ask_price", "ask_size")),
    ),
    Rule(
        "within_session_hours",
        "session open <= snapshot_ts <= session close (half days close early)",
        (WithinColumns("snapshot_ts", SESSION_OPEN, SESSION_CLOSE),),
    ),
)


def _per_snapshot(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each row's snapshot total of `values` (ids are 0..k-1, as rle_id gives)."""
    return np.bincount(ids, weights=values)[ids]


def _whole_snapshots(flagged: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """A rule broken by one row is broken by every row of its snapshot."""
    ids = flagged[SNAPSHOT].to_numpy()
    return flagged.with_columns(
        pl.Series(n, _per_snapshot(ids, flagged[n].to_numpy().astype(np.float64)) > 0)
        for n in names
    )


def validate_order_books(frame: pl.DataFrame, market: str, sessions: list[dt.date]) -> Validated:
    """Split snapshots into clean and quarantined (all rows of a snapshot go together), sorted
    by (symbol, snapshot_ts, level); columns as given."""
    bounds = (
        session_table(market, sessions)
        .drop("slots")
        .with_columns(
            # A closing snapshot (taken at the close) still belongs to the session.
            pl.col(SESSION_CLOSE) + dt.timedelta(microseconds=1)
        )
    )
    ordered = frame.sort(*KEY, "level", nulls_last=True)
    ids = ordered.select(pl.struct(*KEY).rle_id()).to_series().to_numpy().astype(np.int64)
    first_of_level = ordered.select(
        (pl.col("level") != pl.col("level").shift(1)).fill_null(True)
    ).to_series()
    first_of_level = (first_of_level.to_numpy() | (ids != np.roll(ids, 1))).astype(np.float64)
    prepared = ordered.with_columns(
        pl.Series(SNAPSHOT, ids),
        pl.Series(ROWS, _per_snapshot(ids, np.ones(len(ids))), dtype=pl.Int64),
        pl.Series(LEVELS, _per_snapshot(ids, first_of_level), dtype=pl.Int64),
    ).join(bounds, on="trade_date", how="left", maintain_order="left")
    result = validate(prepared, ORDER_BOOK_RULES, widen=_whole_snapshots)
    return in_columns_of(result, frame)


ORDER_BOOK_CHECKS = (
    rules_check(
        ORDER_BOOK_RULES_CHECK,
        ORDER_BOOK_RULES,
        "Stored snapshots satisfy every rule ({rules}); a snapshot breaking one is quarantined "
        "whole.",
    ),
    Check(
        SNAPSHOT_COVERAGE,
        f"Each session has >= {100 * COVERAGE_THRESHOLD:g}% of the snapshots expected: symbols "
        "active that day x capture slots of the session.",
        blocking=True,
    ),
)


def order_book_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return check_specs(asset_key, ORDER_BOOK_CHECKS)


def order_book_rules_result(
    stored: pl.DataFrame, validated: Validated, market: str, sessions: list[dt.date]
) -> dg.AssetCheckResult:
    """Re-validates what is being stored: passes when no stored row breaks a rule."""
    revalidated = validate_order_books(stored, market, sessions)
    return rules_result(ORDER_BOOK_RULES_CHECK, stored, revalidated, validated)


def coverage_by_session(
    stored: pl.DataFrame,
    universe: pl.DataFrame,
    market: str,
    sessions: list[dt.date],
    interval_minutes: int,
) -> pl.DataFrame:
    """Per session: snapshots of active symbols stored, expected (active symbols x capture
    slots) and the share of the second stored, in percent."""
    sessions = sorted(sessions)
    snapshots = stored.filter(pl.col("level") == 1).select("symbol", "trade_date")
    counts = completeness_by_session(snapshots, universe, sessions)
    slots = [len(capture_slots(market, d, interval_minutes)) for d in sessions]
    return (
        counts.select("trade_date", "active", snapshots="stored")
        .with_columns(slots=pl.Series(slots, dtype=pl.Int64))
        .with_columns(expected=pl.col("active") * pl.col("slots"))
        .with_columns(
            coverage_pct=pl.when(pl.col("expected") > 0)
            .then(100 * pl.col("snapshots") / pl.col("expected"))
            .otherwise(100.0)  # nothing was expected that day
            .round(2)
        )
    )


def coverage_result(by_session: pl.DataFrame) -> dg.AssetCheckResult:
    threshold = 100 * COVERAGE_THRESHOLD
    short = by_session.filter(pl.col("coverage_pct") < threshold)
    # polars types a Series' min as any Python value or None; this is a float's.
    lowest = float(cast(float, by_session["coverage_pct"].min())) if len(by_session) else 100.0
    listed = ", ".join(
        f"{d} {c:.2f}%" for d, c in short.select("trade_date", "coverage_pct").rows()
    )
    return dg.AssetCheckResult(
        check_name=SNAPSHOT_COVERAGE,
        passed=short.is_empty(),
        description=(
            f"{len(short)} session(s) below {threshold:g}% snapshot coverage: {listed}"
            if len(short)
            else f"every session has >= {threshold:g}% of its expected snapshots"
        ),
        metadata={
            "threshold_pct": threshold,
            "min_coverage_pct": lowest,
            "by_session": dg.MetadataValue.md(markdown_table(by_session, limit=20)),
        },
    )
