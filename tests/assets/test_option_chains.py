"""us/option_chains: greeks against py_vollib, every rule on its defect, a real materialization."""

import datetime as dt
import warnings

import numpy as np
import polars as pl
import pytest

from checks.greeks import black_scholes
from checks.option_rules import (
    OPTION_RULES,
    missing_underlyings,
    option_rules,
    parity_breaks,
    rules_result,
)
from checks.rulebook import validate
from checks.schemas import OPTION_CHAINS
from marketpipe_assets.options import derive, fetch
from resources.market_data import MarketDataResource
from resources.sources.base import FallbackSource, SourceUnavailable
from resources.sources.synthetic import SyntheticSource
from resources.sources.synthetic_options import DEFECTS, fridays, option_chains
from tests.conftest import recent_sessions

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from py_vollib.black_scholes import black_scholes as ref_price
    from py_vollib.black_scholes.greeks import analytical as ref

SESSION = dt.date(2026, 11, 18)  # a Wednesday
UNDERLYINGS = ["SPY", "QQQ", "AAPL"]
# py_vollib uses the same closed forms; the only difference is floating-point order.
TOLERANCE = 1e-9


def test_greeks_agree_with_py_vollib():
    rng = np.random.default_rng(7)
    n = 400
    spot = rng.uniform(10, 500, n)
    strike = spot * rng.uniform(0.6, 1.4, n)
    years = rng.uniform(1 / 365, 1.0, n)
    sigma = rng.uniform(0.05, 2.0, n)
    is_call = rng.random(n) < 0.5
    rate = 0.045
    ours = black_scholes(spot, strike, years, sigma, is_call, rate)
    for i in range(n):
        args = ("c" if is_call[i] else "p", spot[i], strike[i], years[i], rate, sigma[i])
        assert ours["price"][i] == pytest.approx(ref_price(*args), abs=TOLERANCE, rel=TOLERANCE)
        for name in ("delta", "gamma", "theta", "vega"):
            expected = getattr(ref, name)(*args)
            assert ours[name][i] == pytest.approx(expected, abs=TOLERANCE, rel=TOLERANCE), name


def test_greeks_are_null_where_they_cannot_be_priced():
    out = black_scholes([100, 100, 100], [100, 100, 0], [0.0, 0.5, 0.5], [0.2, -0.1, 0.2],
                        [True, True, False])  # fmt: skip
    assert np.isnan(out["delta"]).all()


def chain(*defects):
    return derive(option_chains(0, UNDERLYINGS, [SESSION], defects))[0]


def test_synthetic_chain_shape_and_determinism():
    frame = chain()
    assert frame.columns == list(OPTION_CHAINS)
    assert frame.equals(chain())
    expirations = sorted(frame["expiration"].unique())
    assert expirations == fridays(SESSION) and all(d.weekday() == 4 for d in expirations)
    assert max(expirations) <= SESSION + dt.timedelta(days=90)
    assert 0 < frame["volume"].null_count() < len(frame) * 0.2
    assert set(frame["underlying"]) == set(UNDERLYINGS)
    for (_,), rows in frame.group_by(["underlying"]):
        spot = rows["underlying_price"][0]
        assert rows["strike"].min() >= 0.69 * spot and rows["strike"].max() <= 1.31 * spot
    # A smile: the wings' implied volatility is above the at-the-money one.
    near = frame.filter(pl.col("days_to_expiry") == frame["days_to_expiry"].max())
    atm = near.filter((pl.col("moneyness") - 1).abs() < 0.03)["implied_volatility"].mean()
    assert near["implied_volatility"].max() > atm
    calls = frame.filter(pl.col("option_type") == "call", pl.col("delta").is_not_null())
    assert calls["delta"].is_between(0, 1).all() and (calls["gamma"] > 0).all()


def test_clean_chain_passes_every_check():
    validated = validate(chain(), OPTION_RULES)
    assert validated.quarantined.is_empty()
    assert parity_breaks(validated.clean).is_empty()
    assert missing_underlyings(validated.clean, UNDERLYINGS, [SESSION]).is_empty()


@pytest.mark.parametrize(
    ("defect", "rule"),
    [
        ("bid_above_ask", "bid_within_ask"),
        ("negative_bid", "bid_within_ask"),
        ("zero_strike", "positive_strike"),
        ("expired", "not_expired"),
        ("iv_out_of_range", "implied_volatility_in_range"),
        ("duplicate_contract", "unique_contract"),
        ("missing_field", "required_fields"),
        ("bad_option_type", "known_option_type"),
    ],
)
def test_each_rule_quarantines_its_defect(defect, rule):
    validated = validate(chain(defect), OPTION_RULES)
    assert validated.violation_counts[rule] >= 1
    assert {r for r, n in validated.violation_counts.items() if n} == {rule}
    assert validated.quarantined["violations"].to_list() == [[rule]] * len(validated.quarantined)
    assert len(validated.clean) + len(validated.quarantined) == len(chain(defect))


def test_absurd_vendor_iv_with_a_sane_quote_is_solved_from_the_mid():
    """The vendor's IV is absent, 0 or out of range but the quote is sound: the IV solved from
    the mid replaces it and the row is stored; an absurd quote (the defect) stays quarantined."""
    raw = option_chains(0, UNDERLYINGS, [SESSION])
    # Three near-the-money contracts of the longest expiry: quotes with a time value to solve.
    picked = (
        raw.with_row_index()
        .filter(
            pl.col("expiration") == pl.col("expiration").max(),
            (pl.col("strike") / pl.col("underlying_price") - 1).abs() < 0.05,
        )["index"]
        .head(3)
        .to_list()
    )
    row = pl.int_range(pl.len())
    spoiled = raw.with_columns(
        implied_volatility=pl.when(row == picked[0])
        .then(None)
        .when(row == picked[1])
        .then(0.0)
        .when(row == picked[2])
        .then(7.5)
        .otherwise(pl.col("implied_volatility"))
    )
    frame, counts = derive(spoiled)
    assert counts == {"vendor": len(raw) - 3, "solved": 3, "unsolved": 0}
    assert validate(frame, OPTION_RULES).quarantined.is_empty()
    # The synthetic quote is the Black-Scholes price of the vendor's IV rounded to cents, so
    # the solved IV is close to it, not equal.
    solved = frame["implied_volatility"].gather(picked).to_numpy()
    assert np.abs(solved - raw["implied_volatility"].gather(picked).to_numpy()).max() < 0.01
    assert frame["delta"].gather(picked).null_count() == 0
    _, defect_counts = derive(option_chains(0, UNDERLYINGS, [SESSION], ["iv_out_of_range"]))
    assert defect_counts["unsolved"] == 1


def test_rule_check_reports_stored_rows_that_break_rules():
    frame = chain("bid_above_ask", "duplicate_contract")
    validated = validate(frame, OPTION_RULES)
    assert rules_result(validated.clean, validated, OPTION_RULES).passed
    failed = rules_result(frame, validated, OPTION_RULES)  # as if the split had kept them
    assert not failed.passed
    assert failed.metadata["stored_rows_breaking_rules"].value == {
        "bid_within_ask": 1,
        "unique_contract": 2,
    }


def test_iv_range_is_configurable():
    frame = chain()
    assert (
        validate(frame, option_rules((0.0, 0.3))).violation_counts["implied_volatility_in_range"]
        > 0
    )


def test_parity_break_warns_and_missing_underlying_is_found():
    assert len(parity_breaks(chain("parity_break"))) == 1
    missing = missing_underlyings(chain("missing_underlying"), UNDERLYINGS, [SESSION])
    assert missing.rows() == [(SESSION, UNDERLYINGS[0])]


def test_every_defect_is_covered():
    assert set(DEFECTS) == {
        "bid_above_ask", "negative_bid", "zero_strike", "expired", "iv_out_of_range",
        "duplicate_contract", "missing_field", "bad_option_type", "parity_break",
        "missing_underlying",
    }  # fmt: skip


class NoOptions:
    name = "nooptions"


def test_source_without_options_is_unavailable_and_a_chain_moves_on():
    with pytest.raises(SourceUnavailable, match="no option chains"):
        fetch(NoOptions(), UNDERLYINGS, [SESSION])
    chain_source = FallbackSource([NoOptions(), SyntheticSource()])
    assert len(fetch(chain_source, UNDERLYINGS, [SESSION])) > 0
    assert chain_source.last_failures[0]["source"] == "nooptions"


def test_underlyings_setting(monkeypatch):
    monkeypatch.setenv("MARKETPIPE_OPTION_UNDERLYINGS", " tsla, nvda ,")
    assert MarketDataResource.from_env().underlyings() == ["TSLA", "NVDA"]


def _run(lake, market_data, instance, key, config=None):
    import dagster as dg

    from marketpipe_assets.definitions import assets

    option_assets = [a for a in assets if a.key == dg.AssetKey(["us", "option_chains"])]
    return dg.materialize(
        option_assets,
        instance=instance,
        resources={"lake": lake, "market_data": market_data},
        partition_key=key,
        run_config=config,
        raise_on_error=False,
    )


def test_materializes_one_session_from_the_synthetic_source(lake, market_data, instance):
    key = recent_sessions("us", 1)[0]
    result = _run(lake, market_data, instance, key)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"option_rules": True, "underlying_completeness": True,
                      "put_call_parity": True}  # fmt: skip
    day = dt.date.fromisoformat(key)
    stored = pl.read_parquet(lake.partition_file("option_chains", "us", day))
    assert stored.columns == list(OPTION_CHAINS)
    assert set(stored["underlying"]) == set(market_data.underlyings())
    assert (stored["quote_date"] == day).all() and stored["delta"].null_count() < len(stored)
    assert not lake.fs.exists(lake.partition_file("quarantine/option_chains", "us", day))
    # A narrower IV range quarantines rows, which carry the rule's name.
    # (above every underlying's lowest IV, so each keeps contracts and completeness holds)
    iv_max = stored.group_by("underlying").agg(pl.col("implied_volatility").min())[:, 1].max()
    narrow = {"ops": {"us__option_chains": {"config": {"iv_max": iv_max + 0.05}}}}
    assert _run(lake, market_data, instance, key, narrow).success
    quarantined = pl.read_parquet(lake.partition_file("quarantine/option_chains", "us", day))
    assert len(quarantined) > 0
    assert set(quarantined["violations"].explode()) == {"implied_volatility_in_range"}
    # Re-running clean removes the stale quarantine file.
    assert _run(lake, market_data, instance, key).success
    assert not lake.fs.exists(lake.partition_file("quarantine/option_chains", "us", day))


def test_a_contract_expiring_today_has_greeks_until_the_close():
    """Days to expiry run to the expiry session's close: on expiry day a chain fetched at 11:00
    New York has 5 hours left (greeks as py_vollib gives them), one quoted at the close none."""
    from marketpipe_assets.options import NEW_YORK

    friday = dt.date(2026, 11, 20)
    raw = option_chains(0, ["SPY"], [friday])
    at_eleven = dt.datetime(2026, 11, 20, 11, 0, tzinfo=NEW_YORK)
    live = derive(raw, fetched_at=at_eleven)[0]
    today = live.filter(pl.col("expiration") == friday)
    assert len(today) > 0 and ((today["days_to_expiry"] - 5 / 24).abs() < 1e-12).all()
    assert today["delta"].null_count() == 0
    for row in today.head(6).iter_rows(named=True):
        flag = "c" if row["option_type"] == "call" else "p"
        years = row["days_to_expiry"] / 365
        args = (flag, row["underlying_price"], row["strike"], years, 0.04,
                row["implied_volatility"])  # fmt: skip
        for name in ("delta", "gamma", "theta", "vega"):
            assert row[name] == pytest.approx(getattr(ref, name)(*args), rel=1e-9, abs=1e-9)
    # Quoted at the close of its expiry day, the contract has expired: no time, no greeks.
    closed = derive(raw)[0].filter(pl.col("expiration") == friday)
    assert (closed["days_to_expiry"] == 0).all() and closed["delta"].null_count() == len(closed)
    # Later expirations count to their own close: the day after Thanksgiving closes at 13:00.
    black_friday = derive(option_chains(0, ["SPY"], [SESSION]))[0].filter(
        pl.col("expiration") == dt.date(2026, 11, 27)
    )
    assert ((black_friday["days_to_expiry"] - (9 - 3 / 24)).abs() < 1e-12).all()
