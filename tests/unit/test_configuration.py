"""Bad configuration fails early with a message naming the variable and what to do; the
universe override and the fallback chain behave as CONTRACT section 4 says."""

import datetime as dt

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.errors import ConfigurationError
from checks.schemas import DAILY_PRICES, UNIVERSE
from resources.lake import LakeResource, LakeUnreachable
from resources.market_data import MarketDataResource
from resources.sources.base import FallbackSource, SourceError, SourceUnavailable
from tests.conftest import market_assets

MARKETPIPE_VARIABLES = (
    "MARKETPIPE_KRX_SOURCE",
    "MARKETPIPE_US_SOURCE",
    "MARKETPIPE_KRX_UNIVERSE",
    "MARKETPIPE_US_UNIVERSE",
    "MARKETPIPE_LANDING_URL",
    "MARKETPIPE_SYNTHETIC_SYMBOLS",
    "MARKETPIPE_SYNTHETIC_SEED",
    "MARKETPIPE_SYNTHETIC_MISSING_RATE",
    "MARKETPIPE_SYNTHETIC_BAD_ROW_RATE",
)


@pytest.fixture
def env(monkeypatch):
    """A clean MARKETPIPE_* environment (the Makefile exports some) to set variables in."""
    for name in MARKETPIPE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# Sources ---------------------------------------------------------------------------------------
def test_unknown_source_names_the_variable_and_the_known_sources(env):
    env.setenv("MARKETPIPE_KRX_SOURCE", "nosuch")
    with pytest.raises(ConfigurationError) as error:
        MarketDataResource.from_env()
    message = str(error.value)
    assert "MARKETPIPE_KRX_SOURCE='nosuch'" in message
    assert "'synthetic'" in message and "'files'" in message
    assert "fallback" in message


def test_unknown_source_inside_a_chain_is_named(env):
    env.setenv("MARKETPIPE_US_SOURCE", "synthetic, nosuch")
    with pytest.raises(ConfigurationError, match=r"MARKETPIPE_US_SOURCE=.*\['nosuch'\]"):
        MarketDataResource.from_env()


def test_empty_source_is_rejected(env):
    env.setenv("MARKETPIPE_KRX_SOURCE", " , ")
    with pytest.raises(ConfigurationError, match="MARKETPIPE_KRX_SOURCE"):
        MarketDataResource.from_env()


def test_defaults_and_a_chain_from_the_environment(env, tmp_path):
    default = MarketDataResource.from_env()
    assert default.source("krx").name == "synthetic"
    env.setenv("MARKETPIPE_KRX_SOURCE", "files,synthetic")
    env.setenv("MARKETPIPE_LANDING_URL", str(tmp_path))
    chain = MarketDataResource.from_env().source("krx")
    assert isinstance(chain, FallbackSource)
    assert [s.name for s in chain.sources] == ["files", "synthetic"]
    assert chain.sources[0].landing_url == str(tmp_path)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MARKETPIPE_SYNTHETIC_SYMBOLS", "lots"),
        ("MARKETPIPE_SYNTHETIC_SYMBOLS", "2.5"),
        ("MARKETPIPE_SYNTHETIC_SEED", "0x"),
        ("MARKETPIPE_SYNTHETIC_MISSING_RATE", "1%"),
    ],
)
def test_non_numeric_setting_names_the_variable(env, variable, value):
    env.setenv(variable, value)
    with pytest.raises(ConfigurationError) as error:
        MarketDataResource.from_env()
    message = str(error.value)
    assert f"{variable}={value!r}" in message
    assert "not a valid" in message and "unset it" in message


def test_numeric_settings_are_read(env):
    env.setenv("MARKETPIPE_SYNTHETIC_SYMBOLS", "7")
    env.setenv("MARKETPIPE_SYNTHETIC_MISSING_RATE", "0.25")
    resource = MarketDataResource.from_env()
    assert resource.synthetic_symbols == 7 and resource.synthetic_missing_rate == 0.25
    assert resource.universe("krx").height == 7


# Universe override -----------------------------------------------------------------------------
def test_missing_universe_file_names_the_variable_and_the_file(env, tmp_path):
    missing = tmp_path / "nowhere" / "universe.csv"
    env.setenv("MARKETPIPE_KRX_UNIVERSE", str(missing))
    resource = MarketDataResource.from_env()
    with pytest.raises(ConfigurationError) as error:
        resource.universe("krx")
    assert "MARKETPIPE_KRX_UNIVERSE" in str(error.value)
    assert str(missing) in str(error.value)


def test_garbage_universe_file_names_the_variable_and_the_file(env, tmp_path):
    garbage = tmp_path / "universe.parquet"
    garbage.write_bytes(b"\x00\x01 definitely not parquet" * 20)
    env.setenv("MARKETPIPE_KRX_UNIVERSE", str(garbage))
    with pytest.raises(ConfigurationError, match=r"MARKETPIPE_KRX_UNIVERSE.*universe\.parquet"):
        MarketDataResource.from_env().universe("krx")


def test_universe_file_without_listing_date_names_the_column(env, tmp_path):
    path = tmp_path / "universe.csv"
    path.write_text("symbol,name\n005930,Samsung Electronics\n")
    env.setenv("MARKETPIPE_KRX_UNIVERSE", str(path))
    with pytest.raises(ConfigurationError, match=r"MARKETPIPE_KRX_UNIVERSE.*listing_date"):
        MarketDataResource.from_env().universe("krx")


UNIVERSE_CSV = """symbol,name,listing_date,delisting_date
005930,Samsung Electronics,1975-06-11,
000660,SK hynix,1996-12-26,
035720,Kakao,2017-07-10,
000030,Woori Bank,2014-11-19,2019-02-12
"""


@pytest.mark.parametrize("source", ["synthetic", "files", "files,synthetic"])
def test_universe_file_is_the_universe_whatever_the_source(env, tmp_path, source):
    path = tmp_path / "krx_universe.csv"
    path.write_text(UNIVERSE_CSV)
    landing = tmp_path / "landing"
    (landing / "krx").mkdir(parents=True)
    # The files source would otherwise list this file's symbol.
    pl.DataFrame(
        {
            "symbol": ["999999"],
            "trade_date": [dt.date(2025, 9, 1)],
            **{c: [100.0] for c in ("open", "high", "low", "close")},
            "volume": [1],
        }
    ).write_parquet(landing / "krx" / "bars.parquet")
    env.setenv("MARKETPIPE_KRX_SOURCE", source)
    env.setenv("MARKETPIPE_LANDING_URL", str(landing))
    env.setenv("MARKETPIPE_KRX_UNIVERSE", str(path))
    universe = MarketDataResource.from_env().universe("krx")
    expected = pl.DataFrame(
        {
            # Leading zeros kept: KRX codes are text.
            "symbol": ["005930", "000660", "035720", "000030"],
            "name": ["Samsung Electronics", "SK hynix", "Kakao", "Woori Bank"],
            "listing_date": [
                dt.date(1975, 6, 11),
                dt.date(1996, 12, 26),
                dt.date(2017, 7, 10),
                dt.date(2014, 11, 19),
            ],
            "delisting_date": [None, None, None, dt.date(2019, 2, 12)],
        },
        schema=UNIVERSE,
    )
    assert_frame_equal(universe, expected)


def test_universe_asset_stores_the_override_file(env, tmp_path, lake, instance):
    path = tmp_path / "krx_universe.csv"
    path.write_text(UNIVERSE_CSV)
    env.setenv("MARKETPIPE_KRX_UNIVERSE", str(path))
    result = dg.materialize(
        market_assets("krx", "universe"),
        instance=instance,
        resources={"lake": lake, "market_data": MarketDataResource.from_env()},
    )
    assert result.success
    stored = lake.read_table("universe", "krx")
    assert sorted(stored["symbol"].to_list()) == ["000030", "000660", "005930", "035720"]
    # The US universe is untouched by the KRX override.
    us = MarketDataResource.from_env().universe("us")
    assert us["name"].str.starts_with("Synthetic US").all()


# Lake ------------------------------------------------------------------------------------------
def test_unreachable_lake_names_the_variable(tmp_path, instance, market_data):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    url = str(blocker / "lake")
    lake = LakeResource(url=url)
    with pytest.raises(LakeUnreachable) as error:
        lake.ensure_reachable()
    assert f"MARKETPIPE_LAKE_URL={url!r}" in str(error.value)
    assert "writable folder" in str(error.value)
    # A run fails at resource set-up, before any step, with that message.
    with pytest.raises(dg.DagsterResourceFunctionError) as run_error:
        dg.materialize(
            market_assets("krx", "universe"),
            instance=instance,
            resources={"lake": lake, "market_data": market_data},
        )
    assert isinstance(run_error.value.__cause__, LakeUnreachable)


# Fallback chain --------------------------------------------------------------------------------
class Down:
    """A source that is unavailable, as a provider outage or open circuit reports itself."""

    def __init__(self, name: str):
        self.name = name
        self.calls = 0

    def universe(self, market):
        self.calls += 1
        raise SourceUnavailable(f"{self.name} is down for {market}")

    def daily_bars(self, market, sessions, symbols):
        self.calls += 1
        raise SourceUnavailable(f"HTTP 503 from {self.name}")


class Up:
    def __init__(self, name: str):
        self.name = name
        self.calls = 0

    def universe(self, market):
        self.calls += 1
        return pl.DataFrame(
            {"symbol": ["A"], "name": ["A"], "listing_date": [dt.date(2020, 1, 2)]}
        ).with_columns(delisting_date=pl.lit(None, pl.Date))

    def daily_bars(self, market, sessions, symbols):
        self.calls += 1
        return pl.DataFrame(
            {
                "symbol": list(symbols),
                "trade_date": [sessions[0]] * len(symbols),
                **{c: [1.0] * len(symbols) for c in ("open", "high", "low", "close")},
                "volume": [1] * len(symbols),
                "source": [self.name] * len(symbols),
            },
            schema=DAILY_PRICES,
        )


class Broken:
    """Answers, but with something unusable: a data problem, not an outage."""

    name = "broken"

    def daily_bars(self, market, sessions, symbols):
        raise SourceError("broken: column 'close' is text")


def test_chain_moves_on_when_a_source_is_unavailable():
    down, up, spare = Down("primary"), Up("secondary"), Up("spare")
    chain = FallbackSource([down, up, spare])
    assert chain.name == "primary,secondary,spare"
    bars = chain.daily_bars("krx", [dt.date(2025, 9, 1)], ["005930", "000660"])
    assert bars["source"].unique().to_list() == ["secondary"]
    assert bars.height == 2
    assert chain.universe("krx")["symbol"].to_list() == ["A"]
    assert (down.calls, up.calls, spare.calls) == (2, 2, 0)  # stops at the first that answers


def test_chain_names_every_failure_when_all_fail():
    chain = FallbackSource([Down("kis"), Down("krx")])
    with pytest.raises(SourceUnavailable) as error:
        chain.daily_bars("krx", [dt.date(2025, 9, 1)], ["005930"])
    message = str(error.value)
    assert "every source in the chain failed" in message
    assert "kis: HTTP 503 from kis" in message and "krx: HTTP 503 from krx" in message


def test_chain_does_not_hide_a_bad_answer_behind_the_next_source():
    # A source that answered wrongly is a data problem to fix, not an outage to route around.
    spare = Up("spare")
    with pytest.raises(SourceError, match="broken"):
        FallbackSource([Broken(), spare]).daily_bars("krx", [dt.date(2025, 9, 1)], ["A"])
    assert spare.calls == 0
