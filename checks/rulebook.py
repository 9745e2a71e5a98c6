"""Daily-price rules as data: one rulebook drives validation, quarantine and the GE suite.

Each rule is a name plus constraints; each constraint knows its polars form (True where a row
breaks it) and its Great Expectations form, so both engines read the same definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from marketpipe_assets.schemas import PRICE_COLUMNS

COMPLETENESS_THRESHOLD = 0.95
# KRX's daily price limit is +/-30%; a larger move is possible (US, corporate actions) but
# worth a look, so it warns instead of blocking.
JUMP_THRESHOLD = 0.30


@dataclass(frozen=True)
class NotNull:
    column: str

    def broken(self) -> pl.Expr:
        return pl.col(self.column).is_null()

    def expectation(self) -> tuple[str, dict]:
        return "ExpectColumnValuesToNotBeNull", {"column": self.column}


@dataclass(frozen=True)
class AtLeast:
    column: str
    bound: float
    strict: bool

    def broken(self) -> pl.Expr:
        col = pl.col(self.column)
        return (col <= self.bound if self.strict else col < self.bound).fill_null(False)

    def expectation(self) -> tuple[str, dict]:
        return "ExpectColumnValuesToBeBetween", {
            "column": self.column,
            "min_value": self.bound,
            "strict_min": self.strict,
        }


@dataclass(frozen=True)
class PairAtLeast:
    """column_a >= column_b; rows where either is missing are left to the NotNull rules."""

    column_a: str
    column_b: str

    def broken(self) -> pl.Expr:
        return (pl.col(self.column_a) < pl.col(self.column_b)).fill_null(False)

    def expectation(self) -> tuple[str, dict]:
        return "ExpectColumnPairValuesAToBeGreaterThanB", {
            "column_A": self.column_a,
            "column_B": self.column_b,
            "or_equal": True,
            "ignore_row_if": "either_value_is_missing",
        }


@dataclass(frozen=True)
class UniqueTogether:
    """Every row of a repeated key breaks it: with two different bars for one key we cannot
    tell which is right, so all copies go to quarantine."""

    columns: tuple[str, ...]

    def broken(self) -> pl.Expr:
        return pl.struct(self.columns).is_duplicated()

    def expectation(self) -> tuple[str, dict]:
        # GE's default ignore_row_if="all_values_are_missing" skips rows whose key columns are all
        # null, but polars' is_duplicated treats null as a value, so two such rows are duplicates
        # there; "never" makes GE compare them too (pandas' duplicated also treats NaN/None as
        # equal).
        return "ExpectCompoundColumnsToBeUnique", {
            "column_list": list(self.columns),
            "ignore_row_if": "never",
        }


@dataclass(frozen=True)
class WithinColumns:
    """lower <= column < upper, the bounds read from other columns; a missing bound (no such
    session) breaks it, a missing value is left to NotNull."""

    column: str
    lower: str
    upper: str

    def broken(self) -> pl.Expr:
        col = pl.col(self.column)
        outside = (col < pl.col(self.lower)) | (col >= pl.col(self.upper))
        no_bounds = pl.col(self.lower).is_null() | pl.col(self.upper).is_null()
        return (outside.fill_null(False) | (no_bounds & col.is_not_null())).fill_null(False)


Constraint = NotNull | AtLeast | PairAtLeast | UniqueTogether | WithinColumns


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    constraints: tuple[Constraint, ...]

    def broken(self) -> pl.Expr:
        return pl.any_horizontal(c.broken() for c in self.constraints).alias(self.name)


REQUIRED_COLUMNS = ("symbol", "trade_date", *PRICE_COLUMNS, "volume")

# The rules every OHLCV bar obeys, daily or intraday.
OHLCV_RULES: tuple[Rule, ...] = (
    Rule(
        "positive_prices",
        "open, high, low and close are > 0",
        tuple(AtLeast(c, 0, strict=True) for c in PRICE_COLUMNS),
    ),
    Rule("high_gte_low", "high >= low", (PairAtLeast("high", "low"),)),
    Rule(
        "open_within_range",
        "low <= open <= high",
        (PairAtLeast("open", "low"), PairAtLeast("high", "open")),
    ),
    Rule(
        "close_within_range",
        "low <= close <= high",
        (PairAtLeast("close", "low"), PairAtLeast("high", "close")),
    ),
    Rule("non_negative_volume", "volume >= 0", (AtLeast("volume", 0, strict=False),)),
)

DAILY_PRICE_RULES: tuple[Rule, ...] = (
    Rule(
        "required_fields",
        "symbol, trade_date, open, high, low, close and volume are present",
        tuple(NotNull(c) for c in REQUIRED_COLUMNS),
    ),
    *OHLCV_RULES,
    Rule(
        "unique_symbol_date",
        "one bar per (symbol, trade_date)",
        (UniqueTogether(("symbol", "trade_date")),),
    ),
)


# Not a rule: a marker. A session without a trade is stored as a flat bar at the base price with
# volume 0 (KRX sends open/high/low = 0 for it; resources/providers/krx.py makes it flat), which
# passes every rule above; this is how such a halted row is recognised in stored data (defect
# catalogue: "volume == 0 and price unchanged -> halted").
HALTED = (
    (pl.col("volume") == 0)
    & (pl.col("open") == pl.col("close"))
    & (pl.col("high") == pl.col("close"))
    & (pl.col("low") == pl.col("close"))
    & (pl.col("close") > 0)
).fill_null(False)


@dataclass(frozen=True)
class Validated:
    clean: pl.DataFrame
    quarantined: pl.DataFrame  # the input's columns plus `violations`: list of rule names
    violation_counts: dict[str, int]  # rows breaking each rule (a row may break several)


def validate(
    frame: pl.DataFrame,
    rules: tuple[Rule, ...] = DAILY_PRICE_RULES,
    *,
    widen: Callable[[pl.DataFrame, list[str]], pl.DataFrame] | None = None,
) -> Validated:
    """Split rows into clean and quarantined; nothing is dropped.

    `widen(flagged, rule_names)` may spread each row's rule flags to related rows (an order
    book's snapshot is quarantined whole) before the split.
    """
    names = [r.name for r in rules]
    flagged = frame.with_columns(r.broken() for r in rules)
    if widen is not None:
        flagged = widen(flagged, names)
    counts = flagged.select(pl.col(n).sum() for n in names).row(0, named=True)
    bad = pl.any_horizontal(pl.col(n) for n in names)
    # Lists are built for the few bad rows only: building them for every row costs 100x more.
    quarantined = flagged.filter(bad).with_columns(
        pl.concat_list(pl.when(pl.col(n)).then(pl.lit(n)) for n in names)
        .list.drop_nulls()
        .alias("violations")
    )
    return Validated(
        clean=flagged.filter(~bad).select(frame.columns),
        quarantined=quarantined.select(*frame.columns, "violations"),
        violation_counts={n: int(counts[n] or 0) for n in names},
    )


def day_over_day_jumps(prices: pl.DataFrame, threshold: float = JUMP_THRESHOLD) -> pl.DataFrame:
    """Rows whose close moved more than `threshold` from the symbol's previous stored close."""
    return (
        prices.sort("symbol", "trade_date")
        .with_columns(prev_close=pl.col("close").shift(1).over("symbol"))
        .with_columns(change=pl.col("close") / pl.col("prev_close") - 1)
        .filter(pl.col("change").abs() > threshold)
        .select("symbol", "trade_date", "prev_close", "close", "change")
    )
