"""Daily-price rules as data: one rulebook drives validation, quarantine and the GE suite.

Each rule is a name plus constraints; each constraint knows its polars form (True where a row
breaks it) and its Great Expectations form, so both engines read the same definition.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import polars as pl

from .schemas import DAILY_PRICES, PRICE_COLUMNS, RAW

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


# The largest finite float64: GE's form of "finite" is a range it spans.
_FLOAT_MAX = 1.7976931348623157e308


@dataclass(frozen=True)
class Finite:
    """+inf passes every lower bound, so finiteness is its own constraint; null is left to
    NotNull (standardise turns NaN into null, keeping the NaN in `raw`)."""

    column: str

    def broken(self) -> pl.Expr:
        return (~pl.col(self.column).is_finite()).fill_null(False)

    def expectation(self) -> tuple[str, dict]:
        return "ExpectColumnValuesToBeBetween", {
            "column": self.column,
            "min_value": -_FLOAT_MAX,
            "max_value": _FLOAT_MAX,
        }


@dataclass(frozen=True)
class NotBlank:
    """A quoted empty or all-whitespace text is present to NotNull but names nothing."""

    column: str

    def broken(self) -> pl.Expr:
        return pl.col(self.column).str.contains(r"^\s*$").fill_null(False)

    def expectation(self) -> tuple[str, dict]:
        return "ExpectColumnValuesToNotMatchRegex", {"column": self.column, "regex": r"^\s*$"}


@dataclass(frozen=True)
class Parsed:
    """The field's value was read as its type: schemas.conform keeps the text of each value it
    could not read in the row's `raw` JSON object (and leaves the typed column null), so a key
    for this field there means the source sent something that is not a valid value."""

    column: str

    @property
    def key(self) -> str:
        return f'"{self.column}":'  # conform writes keys with json.dumps: never inside a value

    def broken(self) -> pl.Expr:
        return pl.col(RAW).str.contains(self.key, literal=True).fill_null(False)

    def expectation(self) -> tuple[str, dict]:
        return "ExpectColumnValuesToNotMatchRegex", {"column": RAW, "regex": self.key}


@dataclass(frozen=True)
class OneOfDates:
    """The date is one of `days` (a run's sessions); null is left to NotNull."""

    column: str
    days: tuple[dt.date, ...]

    def broken(self) -> pl.Expr:
        return (~pl.col(self.column).is_in(pl.Series(self.days, dtype=pl.Date))).fill_null(False)


class Constraint(Protocol):
    """What a rule is made of: the classes above, and datasets' own (option_rules,
    order_book_rules)."""

    def broken(self) -> pl.Expr:
        """True where a row breaks the constraint."""


class ExpectationConstraint(Constraint, Protocol):
    """A constraint Great Expectations can check too (checks/ge_suite.py)."""

    def expectation(self) -> tuple[str, dict]:
        """The GE expectation's class name and keyword arguments."""


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    constraints: tuple[Constraint, ...]

    def broken(self) -> pl.Expr:
        return pl.any_horizontal(c.broken() for c in self.constraints).alias(self.name)


REQUIRED_COLUMNS = ("symbol", "trade_date", *PRICE_COLUMNS, "volume")


def parsed_rules(schema: pl.Schema) -> tuple[Rule, ...]:
    """`unparseable:<field>` for each typed (non-text) field: the source sent a value that is
    not one (`abc`, `1.5` for a count, `1e20` beyond int64, `2026-13-45`, NaN); the row's
    `raw` shows it."""
    return tuple(
        Rule(
            f"unparseable:{name}",
            f"{name} was sent as a valid {dtype} (what was sent is kept in raw)",
            (Parsed(name),),
        )
        for name, dtype in schema.items()
        if dtype != pl.String
    )


def finite_rule(name: str, columns: tuple[str, ...]) -> Rule:
    return Rule(name, f"{', '.join(columns)} are finite (not inf)", tuple(map(Finite, columns)))


def named_rule(column: str) -> Rule:
    return Rule(f"non_empty_{column}", f"{column} is not empty or blank", (NotBlank(column),))


def session_rule(column: str, sessions: tuple[dt.date, ...]) -> Rule:
    """Rows dated on a weekend, a holiday or a session the run does not materialize: the
    source sent them for this run, so they are quarantined here rather than lost."""
    return Rule(
        "not_a_session",
        f"{column} is one of the sessions the run materializes",
        (OneOfDates(column, tuple(sessions)),),
    )


# The rules every OHLCV bar obeys, daily or intraday.
OHLCV_RULES: tuple[Rule, ...] = (
    finite_rule("finite_prices", PRICE_COLUMNS),
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
    *parsed_rules(DAILY_PRICES),
    named_rule("symbol"),
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


def in_columns_of(result: Validated, frame: pl.DataFrame) -> Validated:
    """`result` of validating `frame` with helper columns added (session bounds, snapshot ids),
    back in `frame`'s own columns; `raw`, the evidence of unread values, in the quarantine."""
    columns = [c for c in frame.columns if c != RAW]
    return Validated(
        clean=result.clean.select(columns),
        quarantined=result.quarantined.select(*columns, "violations", RAW),
        violation_counts=result.violation_counts,
    )


def validate(
    frame: pl.DataFrame,
    rules: tuple[Rule, ...] = DAILY_PRICE_RULES,
    *,
    widen: Callable[[pl.DataFrame, list[str]], pl.DataFrame] | None = None,
) -> Validated:
    """Split rows into clean and quarantined; nothing is dropped.

    `widen(flagged, rule_names)` may spread each row's rule flags to related rows (an order
    book's snapshot is quarantined whole) before the split. The evidence column `raw`
    (schemas.conform) goes to the quarantine only: a stored row parsed whole, so it has none.
    """
    if RAW not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.String).alias(RAW))
    columns = [c for c in frame.columns if c != RAW]
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
        clean=flagged.filter(~bad).select(columns),
        quarantined=quarantined.select(*columns, "violations", RAW),
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
