"""The rulebook as a Great Expectations suite: a second engine counting the same violations.

Every constraint of `checks.rulebook.DAILY_PRICE_RULES` yields one expectation (its
`.expectation()`), tagged with the rule it belongs to. `ge_violation_counts` runs the suite on a
frame and counts, per rule, the rows breaking it: the union of the unexpected row indices of the
rule's expectations, so a row breaking two constraints of one rule counts once, exactly as
`checks.rulebook.validate(frame).violation_counts` counts.

great_expectations is called directly (dagster-ge needs GE < 1.0) and imported lazily: importing
it costs seconds, and every Dagster process loads this module's importers.

Missing values: polars null becomes NaN/None/NaT in pandas, which GE treats as missing exactly as
the rulebook treats null. A polars NaN, however, is a *value* to the rulebook and missing to GE;
the pipeline's `standardise` turns NaN into null before validation, so run both engines on
standardised frames (everything stored in or quarantined by the lake is).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, cast

import polars as pl

from .rulebook import DAILY_PRICE_RULES, ExpectationConstraint, Rule
from .schemas import RAW

if TYPE_CHECKING:
    import great_expectations as gx

SUITE_NAME = "daily_prices"
_RULE_META = "marketpipe_rule"


def ge_version() -> str:
    import great_expectations as gx

    return gx.__version__


def build_suite(rules: tuple[Rule, ...] = DAILY_PRICE_RULES) -> gx.ExpectationSuite:
    """One expectation per constraint; `meta["marketpipe_rule"]` names the rule it belongs to."""
    import great_expectations as gx

    _ephemeral_context()  # GE builds suites only with an active context
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for rule in rules:
        for constraint in rule.constraints:
            # The daily rules' constraints all have a GE form (tests/test_ge_parity.py).
            class_name, kwargs = cast(ExpectationConstraint, constraint).expectation()
            expectation_class = getattr(gx.expectations, class_name)
            suite.add_expectation(
                expectation_class(**kwargs, meta={_RULE_META: rule.name}, catch_exceptions=False)
            )
    return suite


@cache
def _ephemeral_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # In memory, no usage statistics sent anywhere, no tqdm bars in the run logs.
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


@cache
def _batch_definition():
    """The pandas datasource is the same for every frame; only the batch's dataframe changes."""
    asset = (
        _ephemeral_context()
        .data_sources.add_pandas("marketpipe")
        .add_dataframe_asset("daily_prices")
    )
    return asset.add_batch_definition_whole_dataframe("whole_frame")


def to_pandas(frame: pl.DataFrame):
    """Numpy-backed pandas frame indexed 0..n-1: nulls become NaN (floats, and ints that have
    them), None (strings) or NaT (dates), all of which GE treats as missing."""
    return frame.to_pandas().reset_index(drop=True)


def ge_unexpected_rows(
    frame: pl.DataFrame, rules: tuple[Rule, ...] = DAILY_PRICE_RULES
) -> dict[str, set[int]]:
    """Per rule, the row positions (0-based) of `frame` that break at least one of its
    expectations according to Great Expectations."""
    by_rule: dict[str, set[int]] = {r.name: set() for r in rules}
    if frame.is_empty():
        return by_rule
    if RAW not in frame.columns:  # nothing failed to parse (schemas.conform)
        frame = frame.with_columns(pl.lit(None, pl.String).alias(RAW))
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": to_pandas(frame)})
    result = batch.validate(build_suite(rules), result_format={"result_format": "COMPLETE"})
    for outcome in result.results:
        config = outcome.expectation_config
        rule = config.meta[_RULE_META]
        info = outcome.exception_info or {}
        if info.get("raised_exception"):
            raise RuntimeError(
                f"GE expectation {config.type} for rule {rule} raised: "
                f"{info.get('exception_message')}"
            )
        indices = outcome.result.get("unexpected_index_list")
        if indices is None:
            raise RuntimeError(f"GE gave no unexpected_index_list for {config.type} ({rule})")
        by_rule[rule].update(int(i) for i in indices)
    return by_rule


def ge_violation_counts(
    frame: pl.DataFrame, rules: tuple[Rule, ...] = DAILY_PRICE_RULES
) -> dict[str, int]:
    """Rows breaking each rule according to Great Expectations (a row counts once per rule)."""
    return {rule: len(rows) for rule, rows in ge_unexpected_rows(frame, rules).items()}
