"""The Great Expectations suite counts what the polars rulebook counts, and runs as a check."""

import datetime as dt
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest

from checks.ge_suite import build_suite, ge_unexpected_rows, ge_violation_counts
from checks.rulebook import DAILY_PRICE_RULES, REQUIRED_COLUMNS, validate
from checks.schemas import DAILY_PRICES
from marketpipe_assets.ge_check import GREAT_EXPECTATIONS, ge_asset_check
from marketpipe_assets.prices import standardise
from resources.market_data import MarketDataResource
from tests.conftest import REPO, market_assets, materialize, recent_sessions

pytestmark = pytest.mark.xdist_group("ge")

DAY = dt.date(2026, 3, 2)
RULES = [r.name for r in DAILY_PRICE_RULES]
NAN = float("nan")
INF = float("inf")


def bar(symbol, day=DAY, o=100.0, h=110.0, low=90.0, c=105.0, v=1_000):
    return {
        "symbol": symbol,
        "trade_date": day,
        "open": o,
        "high": h,
        "low": low,
        "close": c,
        "volume": v,
        "source": "test",
    }


def violation_frame() -> pl.DataFrame:
    """Every kind of defect, alone and combined, among clean bars; NaN as a feed would send it
    (standardise turns it into null, as the pipeline does before validating)."""
    clean = [bar(f"C{i:02d}", DAY + dt.timedelta(days=d)) for i in range(6) for d in range(3)]
    rows = [
        *clean,
        bar("EDGE", o=50.0, h=50.0, low=50.0, c=50.0, v=0),  # equalities are allowed
        # a null in each required column, and a NaN price
        *({**bar(f"N{i}"), col: None} for i, col in enumerate(REQUIRED_COLUMNS)),
        bar("NAN1", o=NAN),
        bar("NAN2", h=NAN, low=NAN),
        # zero and negative prices
        bar("Z1", o=0.0),
        bar("Z2", c=0.0),
        bar("Z3", o=-1.0, h=-0.5, low=-2.0, c=-1.0),
        bar("Z4", low=0.0),
        # broken relations
        bar("HL", h=85.0),
        bar("O1", o=111.0),
        bar("O2", o=89.0),
        bar("K1", c=110.01),
        bar("K2", c=80.0),
        bar("OK", o=120.0, c=70.0),  # open and close both outside
        # negative volume
        bar("V1", v=-1),
        bar("V2", v=-1_000_000),
        # repeated keys, including three copies and keys made of nulls only
        bar("D1"),
        bar("D1", c=104.0),
        bar("D2"),
        bar("D2"),
        bar("D2", c=None),
        {**bar(None), "trade_date": None},
        {**bar(None), "trade_date": None, "close": 101.0},
        {**bar("D3"), "trade_date": None},
        {**bar("D3"), "trade_date": None},
        # several rules at once
        bar("M1", o=0.0, h=-1.0, low=5.0, c=None, v=-7),
        bar("M2", h=None, o=-3.0, v=-2),
        bar("M2", h=95.0, low=96.0, o=97.0, c=120.0),
        # infinite prices pass every bound; blank symbols are present but name nothing
        bar("INF1", h=INF),
        bar("INF2", o=-INF, low=-INF),
        bar(""),
        bar(" \t"),
    ]
    # Text a file would send that does not read as its type: kept in `raw` by standardise.
    unreadable = [
        {**bar("T1"), "trade_date": "2026-13-45"},
        {**bar("T2"), "volume": "1.5", "close": "abc"},
        {**bar("T3"), "volume": "1e20"},
    ]
    as_text = pl.DataFrame(
        [{k: None if v is None else str(v) for k, v in r.items()} for r in unreadable],
        schema=dict.fromkeys(DAILY_PRICES, pl.String),
    )
    return pl.concat([standardise(pl.DataFrame(rows, schema=DAILY_PRICES)), standardise(as_text)])


def test_importing_the_project_does_not_import_great_expectations():
    code = (
        "import sys\n"
        "import checks.ge_suite, marketpipe_assets.ge_check, marketpipe_assets.definitions\n"
        "assert 'great_expectations' not in sys.modules, 'imported at module load'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_suite_has_one_expectation_per_constraint_tagged_with_its_rule():
    suite = build_suite()
    expected = [
        (rule.name, *constraint.expectation())
        for rule in DAILY_PRICE_RULES
        for constraint in rule.constraints
    ]
    got = suite.expectations
    assert [(e.meta["marketpipe_rule"], type(e).__name__) for e in got] == [
        (rule, name) for rule, name, _ in expected
    ]
    for expectation, (_, _, kwargs) in zip(got, expected, strict=True):
        assert {k: getattr(expectation, k) for k in kwargs} == kwargs


def test_ge_counts_the_rows_the_rulebook_counts_for_every_rule():
    frame = violation_frame()
    polars_counts = validate(frame).violation_counts
    ge_counts = ge_violation_counts(frame)
    assert ge_counts == polars_counts
    assert all(polars_counts[r] > 0 for r in RULES), polars_counts


def test_ge_flags_the_same_rows_as_the_rulebook():
    frame = violation_frame()
    flagged = frame.with_row_index("row").with_columns(r.broken() for r in DAILY_PRICE_RULES)
    by_polars = {r: set(flagged.filter(pl.col(r))["row"].to_list()) for r in RULES}
    assert ge_unexpected_rows(frame) == by_polars


def test_a_row_breaking_several_constraints_of_a_rule_counts_once():
    frame = violation_frame()
    for rule in DAILY_PRICE_RULES:
        per_constraint = frame.select(
            c.broken().sum().alias(str(i)) for i, c in enumerate(rule.constraints)
        ).row(0)
        if sum(per_constraint) > validate(frame).violation_counts[rule.name]:
            break
    else:
        pytest.fail("no row of the frame breaks two constraints of one rule")
    assert ge_violation_counts(frame)[rule.name] == validate(frame).violation_counts[rule.name]


def test_ge_and_rulebook_agree_on_clean_and_empty_frames():
    frame = violation_frame()
    clean = validate(frame).clean
    assert ge_violation_counts(clean) == validate(clean).violation_counts == dict.fromkeys(RULES, 0)
    empty = frame.clear()
    assert ge_violation_counts(empty) == dict.fromkeys(RULES, 0)


# ---- the asset check, through Dagster ------------------------------------------------------


@pytest.fixture
def noisy_market_data() -> MarketDataResource:
    """A bad-row rate high enough that every session quarantines rows, on enough symbols that
    completeness (a blocking check, which would skip the GE check) stays above 95%."""
    return MarketDataResource(
        synthetic_symbols=400,
        synthetic_bad_row_rate=0.02,
        synthetic_missing_rate=0.0,
        landing_url="unused-landing",
    )


def _ge_evaluation(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [evaluation] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == GREAT_EXPECTATIONS
    ]
    return evaluation


def _counts(evaluation: dg.AssetCheckEvaluation) -> tuple[dict, dict]:
    meta = evaluation.metadata
    return meta["ge_violation_counts"].value, meta["quarantine_violation_counts"].value


def _run(market, lake, market_data, instance, **partitions):
    materialize(market, ("universe",), lake=lake, market_data=market_data, instance=instance)
    return materialize(
        market,
        ("daily_prices",),
        lake=lake,
        market_data=market_data,
        instance=instance,
        checks=[ge_asset_check(market)],
        **partitions,
    )


def test_ge_check_passes_on_a_materialized_session(lake, noisy_market_data, instance):
    [session] = recent_sessions("krx", 1)
    result = _run("krx", lake, noisy_market_data, instance, partition_key=session)
    assert result.success

    evaluation = _ge_evaluation(result)
    assert evaluation.passed, evaluation.description
    assert evaluation.partition == session
    assert not evaluation.blocking
    by_ge, recorded = _counts(evaluation)
    assert by_ge == recorded
    assert sum(by_ge.values()) > 0

    day = dt.date.fromisoformat(session)
    stored = lake.read_partitions("daily_prices", "krx", DAILY_PRICES, first=day, last=day)
    quarantined = lake.read_quarantine("daily_prices", "krx", DAILY_PRICES, first=day, last=day)
    assert not quarantined.is_empty()
    meta = evaluation.metadata
    assert meta["rows_checked"].value == len(stored) + len(quarantined)
    assert meta["quarantined_rows"].value == len(quarantined)
    assert meta["great_expectations_version"].value.startswith("1.")


def test_ge_check_covers_a_single_run_range(lake, noisy_market_data, instance):
    sessions = recent_sessions("us", 3)
    result = _run(
        "us", lake, noisy_market_data, instance, partition_range=(sessions[0], sessions[-1])
    )
    assert result.success

    evaluation = _ge_evaluation(result)
    assert evaluation.passed, evaluation.description
    assert evaluation.metadata["sessions"].value == f"{sessions[0]}..{sessions[-1]}"
    first, last = (dt.date.fromisoformat(s) for s in (sessions[0], sessions[-1]))
    quarantined = lake.read_quarantine("daily_prices", "us", DAILY_PRICES, first=first, last=last)
    stored = lake.read_partitions("daily_prices", "us", DAILY_PRICES, first=first, last=last)
    assert evaluation.metadata["rows_checked"].value == len(stored) + len(quarantined)
    by_ge, recorded = _counts(evaluation)
    assert by_ge == recorded
    assert sum(recorded.values()) >= len(quarantined) > 0


def test_ge_check_fails_when_the_quarantine_misrecords(lake, noisy_market_data, instance):
    [session] = recent_sessions("krx", 1)
    assert _run("krx", lake, noisy_market_data, instance, partition_key=session).success

    # Rewrite the session's quarantine as if the rulebook had forgotten one rule.
    day = dt.date.fromisoformat(session)
    quarantined = lake.read_quarantine("daily_prices", "krx", DAILY_PRICES, first=day, last=day)
    forgotten = quarantined["violations"].explode().mode().sort()[0]
    tampered = quarantined.with_columns(pl.col("violations").list.set_difference([forgotten]))
    lake.write_quarantine("daily_prices", "krx", tampered, [day])

    # Run the check alone on that session. materialize(partition_key=...) looks for a
    # partitioned *asset* in the selection (Dagster 1.13 does not resolve one from a partitioned
    # check), so the partition goes in as the run tag Dagster itself sets for it.
    check = ge_asset_check("krx")
    result = dg.materialize(
        [*market_assets("krx", "daily_prices"), check],
        selection=dg.AssetSelection.checks(check),
        instance=instance,
        resources={"lake": lake, "market_data": noisy_market_data},
        tags={"dagster/partition": session},
    )
    assert result.success
    assert result.get_asset_materialization_events() == []
    evaluation = _ge_evaluation(result)
    assert not evaluation.passed
    assert list(evaluation.metadata["disagreements"].value) == [forgotten]
    by_ge, recorded = _counts(evaluation)
    assert recorded[forgotten] == 0 < by_ge[forgotten]
