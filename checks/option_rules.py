"""Option-chain rules as data (same constraint classes as checks/rulebook.py), plus the
put-call parity warning and the underlying-completeness check of us/option_chains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import dagster as dg
import numpy as np
import polars as pl

from .greeks import DAYS_PER_YEAR, RISK_FREE_RATE
from .metadata import markdown_table
from .rulebook import (
    AtLeast,
    NotNull,
    PairAtLeast,
    Rule,
    UniqueTogether,
    Validated,
    finite_rule,
    named_rule,
)
from .specs import Check, check_specs, rules_check

IV_RANGE = (0.0, 5.0)  # implied volatility must lie in (low, high]
PARITY_TOLERANCE = 0.05  # dollars, on top of half the two contracts' spreads
REQUIRED = ("quote_date", "underlying", "contract_symbol", "expiration", "strike",
            "option_type", "bid", "ask", "implied_volatility", "underlying_price")  # fmt: skip

OPTION_RULES_CHECK = "option_rules"
UNDERLYING_COMPLETENESS = "underlying_completeness"
PUT_CALL_PARITY = "put_call_parity"


@dataclass(frozen=True)
class AtMost:
    column: str
    bound: float

    def broken(self) -> pl.Expr:
        return (pl.col(self.column) > self.bound).fill_null(False)

    def expectation(self) -> tuple[str, dict]:
        return "ExpectColumnValuesToBeBetween", {"column": self.column, "max_value": self.bound}


@dataclass(frozen=True)
class OneOf:
    column: str
    values: tuple[str, ...]

    def broken(self) -> pl.Expr:
        return (~pl.col(self.column).is_in(list(self.values))).fill_null(False)

    def expectation(self) -> tuple[str, dict]:
        return "ExpectColumnValuesToBeInSet", {"column": self.column, "value_set": self.values}


def option_rules(iv_range: tuple[float, float] = IV_RANGE) -> tuple[Rule, ...]:
    low, high = iv_range
    return (
        Rule(
            "required_fields", ", ".join(REQUIRED) + " are present", tuple(map(NotNull, REQUIRED))
        ),
        named_rule("underlying"),
        named_rule("contract_symbol"),
        finite_rule(
            "finite_values",
            ("strike", "bid", "ask", "last_price", "implied_volatility", "underlying_price"),
        ),
        Rule(
            "known_option_type",
            "option_type is call or put",
            (OneOf("option_type", ("call", "put")),),
        ),
        Rule(
            "bid_within_ask",
            "0 <= bid <= ask",
            (AtLeast("bid", 0, strict=False), PairAtLeast("ask", "bid")),
        ),
        Rule("positive_strike", "strike > 0", (AtLeast("strike", 0, strict=True),)),
        Rule("not_expired", "expiration >= quote_date", (PairAtLeast("expiration", "quote_date"),)),
        Rule(
            "implied_volatility_in_range",
            f"{low} < implied_volatility <= {high}",
            (AtLeast("implied_volatility", low, strict=True), AtMost("implied_volatility", high)),
        ),
        Rule(
            "unique_contract",
            "one row per (quote_date, contract_symbol)",
            (UniqueTogether(("quote_date", "contract_symbol")),),
        ),
    )


OPTION_RULES = option_rules()


OPTION_CHECKS = (
    rules_check(
        OPTION_RULES_CHECK,
        OPTION_RULES,
        "Stored contracts satisfy every rule ({rules}); breaking rows are quarantined. The IV "
        "range is the run config's.",
    ),
    Check(
        UNDERLYING_COMPLETENESS,
        "Every configured underlying has stored contracts in every session.",
        blocking=True,
    ),
    Check(
        PUT_CALL_PARITY,
        "Warns when call mid - put mid differs from S - K exp(-rT) by more than the tolerance "
        "plus half the two spreads.",
    ),
)


def option_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return check_specs(asset_key, OPTION_CHECKS)


def rules_result(stored: pl.DataFrame, validated: Validated, rules) -> dg.AssetCheckResult:
    # Counts only: the stored rows are re-checked without splitting them again.
    counts = stored.select(r.broken().sum() for r in rules).row(0, named=True)
    broken = {rule: int(n) for rule, n in counts.items() if n}
    return dg.AssetCheckResult(
        check_name=OPTION_RULES_CHECK,
        passed=not broken,
        description=f"stored rows breaking rules: {broken}"
        if broken
        else f"all {len(stored)} stored rows pass; {len(validated.quarantined)} quarantined",
        metadata={
            "stored_rows": len(stored),
            "quarantined_rows": len(validated.quarantined),
            "quarantined_by_rule": validated.violation_counts,
            "stored_rows_breaking_rules": broken,
        },
    )


def missing_underlyings(stored: pl.DataFrame, underlyings, sessions) -> pl.DataFrame:
    """(quote_date, underlying) pairs that were configured but have no stored contract."""
    expected = pl.DataFrame({"quote_date": list(sessions)}, schema={"quote_date": pl.Date}).join(
        pl.DataFrame({"underlying": list(underlyings)}, schema={"underlying": pl.String}),
        how="cross",
    )
    have = stored.select("quote_date", "underlying").unique()
    return expected.join(have, on=["quote_date", "underlying"], how="anti").sort(pl.all())


def completeness_result(stored: pl.DataFrame, underlyings, sessions) -> dg.AssetCheckResult:
    missing = missing_underlyings(stored, underlyings, sessions)
    return dg.AssetCheckResult(
        check_name=UNDERLYING_COMPLETENESS,
        passed=missing.is_empty(),
        description=f"{len(missing)} (session, underlying) pair(s) without stored contracts"
        if len(missing)
        else f"all {len(underlyings)} underlying(s) present in {len(sessions)} session(s)",
        metadata={
            "underlyings": list(underlyings),
            "missing": len(missing),
            "preview": dg.MetadataValue.md(markdown_table(missing)),
        },
    )


def parity_breaks(
    frame: pl.DataFrame, rate: float = RISK_FREE_RATE, tolerance: float = PARITY_TOLERANCE
) -> pl.DataFrame:
    """Call/put pairs (same underlying, session, expiration, strike) whose mids break parity
    C - P = S - K exp(-rT) by more than tolerance + half the two spreads. US equity options are
    American and pay dividends, so real chains deviate a little: this only warns."""
    key = ["quote_date", "underlying", "expiration", "strike"]
    cols = [*key, "underlying_price", "bid", "ask"]
    calls = frame.filter(pl.col("option_type") == "call").select(cols)
    puts = frame.filter(pl.col("option_type") == "put").select(*key, "bid", "ask")
    pairs = calls.join(puts, on=key, how="inner", suffix="_put")
    years = (pl.col("expiration") - pl.col("quote_date")).dt.total_days() / DAYS_PER_YEAR
    mid = (pl.col("bid") + pl.col("ask")) / 2
    mid_put = (pl.col("bid_put") + pl.col("ask_put")) / 2
    spreads = (pl.col("ask") - pl.col("bid") + pl.col("ask_put") - pl.col("bid_put")) / 2
    forward = pl.col("underlying_price") - pl.col("strike") * (-rate * years).exp()
    return (
        pairs.with_columns(deviation=(mid - mid_put - forward).abs(), allowed=tolerance + spreads)
        .filter(pl.col("deviation") > pl.col("allowed"))
        .select(*key, "deviation", "allowed")
    )


def parity_result(stored: pl.DataFrame, rate: float, tolerance: float) -> dg.AssetCheckResult:
    breaks = parity_breaks(stored, rate, tolerance)
    # polars types a Series' max as any Python value or None; this is a float's.
    worst = float(cast(float, breaks["deviation"].max())) if len(breaks) else 0.0
    return dg.AssetCheckResult(
        check_name=PUT_CALL_PARITY,
        passed=breaks.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(breaks)} call/put pair(s) off parity beyond the tolerance",
        metadata={
            "pairs_off_parity": len(breaks),
            "tolerance": tolerance,
            "worst_deviation": float(np.round(worst, 6)),
            "preview": dg.MetadataValue.md(markdown_table(breaks)),
        },
    )
