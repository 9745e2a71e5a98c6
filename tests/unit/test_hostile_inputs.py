"""Hostile input, generated: every row a source sends is stored or quarantined with a rule, and
every stored row obeys every rule.

Hypothesis draws rows whose fields are each either good or one of the defects sources send:
infinite and NaN prices, zero and negative ones, broken OHLC relations, counts such as `1.5`,
`1e20` or `abc`, dates such as `2026-13-45`, empty, a weekend or a holiday, blank symbols and
repeated (symbol, date) keys. They go through the landing-file reader and the KIS and Finnhub
transforms (Finnhub through a local server answering with JSON `Infinity`), then through the
pipeline's own standardise and validate.
"""

from __future__ import annotations

import datetime as dt
import json
import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checks.markets import holidays, sessions_between
from checks.rulebook import DAILY_PRICE_RULES, session_rule, validate
from checks.schemas import RAW
from marketpipe_assets.prices import standardise
from resources.providers import breaker as breaker_module
from resources.providers import limiter as limiter_module
from resources.providers.finnhub import FinnhubSource
from resources.providers.http import RetryPolicy
from resources.providers.kis_daily import daily_frame as kis_bars
from resources.providers.krx import FIELDS as KRX_FIELDS
from resources.providers.krx import parse_bars as krx_bars
from resources.providers.twelvedata import TwelveDataSource
from resources.providers.yahoo import YahooSource
from resources.sources.files import FilesSource
from tests.fakes.finnhub import FakeFinnhub, stamp_of
from tests.fakes.hostile import non_finite
from tests.fakes.twelvedata import API_KEY as TWELVE_DATA_KEY
from tests.fakes.twelvedata import FakeTwelveData
from tests.fakes.yahoo import FakeYahoo, open_epoch

# October 2025 on XKRX: Chuseok (Oct 3-9 are holidays), weekends, and sessions either side.
KRX_SESSIONS = sessions_between("krx", dt.date(2025, 9, 29), dt.date(2025, 10, 14))
KRX_OFF_DAYS = [dt.date(2025, 10, 4), *holidays("krx", dt.date(2025, 10, 1))[:2]]
US_SESSIONS = sessions_between("us", dt.date(2025, 11, 24), dt.date(2025, 12, 2))
US_OFF_DAYS = [dt.date(2025, 11, 27), dt.date(2025, 11, 29)]  # Thanksgiving, a Saturday
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ONE_TRY = RetryPolicy(attempts=1, initial=0.0, jitter=0.0)

GOOD_PRICE = st.floats(min_value=1.0, max_value=1e6, allow_nan=False).map(lambda v: f"{v:.2f}")
BAD_PRICE = st.sampled_from(["inf", "-inf", "Infinity", "NaN", "1e400", "abc", "0", "-3", ""])
GOOD_VOLUME = st.integers(min_value=0, max_value=10**9).map(str)
BAD_VOLUME = st.sampled_from(["1.5", "1e20", "abc", "-5", "1000.0", "", "9" * 30])
SYMBOLS = st.sampled_from(["005930", "000660", "035420", "", "  ", "\t"])


def dates(sessions: list[dt.date], off_days: list[dt.date], fmt: str) -> st.SearchStrategy:
    day = st.sampled_from([*sessions, *off_days]).map(lambda d: d.strftime(fmt))
    return st.one_of(day, st.sampled_from(["2026-13-45", "20251345", "abc", "", " "]))


def rows(sessions, off_days, fmt="%Y-%m-%d") -> st.SearchStrategy[list[dict]]:
    """Text rows, each field good or hostile; a small symbol and date pool repeats keys."""
    price = st.one_of(GOOD_PRICE, GOOD_PRICE, BAD_PRICE)
    row = st.fixed_dictionaries(
        {
            "symbol": SYMBOLS,
            "trade_date": dates(sessions, off_days, fmt),
            "open": price,
            "high": price,
            "low": price,
            "close": price,
            "volume": st.one_of(GOOD_VOLUME, GOOD_VOLUME, BAD_VOLUME),
        }
    )
    return st.lists(row, min_size=1, max_size=25)


def text_frame(records: list[dict]) -> pl.DataFrame:
    schema = dict.fromkeys(["symbol", "trade_date", "open", "high", "low", "close", "volume"])
    return pl.DataFrame(records, schema=dict.fromkeys(schema, pl.String))


def assert_accounted(sent: int, frame: pl.DataFrame, sessions: list[dt.date]) -> None:
    """The pipeline's split of what a source served: nothing lost, every rejected row named,
    and the stored rows pass every rule when validated again."""
    rules = (*DAILY_PRICE_RULES, session_rule("trade_date", tuple(sessions)))
    result = validate(standardise(frame), rules)
    assert len(result.clean) + len(result.quarantined) == sent
    assert all(len(v) > 0 for v in result.quarantined["violations"].to_list())
    assert validate(result.clean, rules).quarantined.is_empty()
    stored = result.clean
    assert (
        stored.select(pl.col(c).is_finite().all() for c in ("open", "high", "low", "close")).row(0)
        == (True,) * 4
    )
    assert stored.filter(pl.col("symbol").str.strip_chars() == "").is_empty()
    assert set(stored["trade_date"].to_list()) <= set(sessions)
    # Whatever did not parse is shown as it was sent.
    for raw, violations in result.quarantined.select(RAW, "violations").iter_rows():
        unreadable = {v.split(":", 1)[1] for v in violations if v.startswith("unparseable:")}
        assert unreadable == set(json.loads(raw) if raw else {})


@pytest.fixture
def landing(tmp_path):
    (tmp_path / "krx").mkdir()
    return tmp_path


@SETTINGS
@given(records=rows(KRX_SESSIONS, KRX_OFF_DAYS), as_parquet=st.booleans())
def test_every_row_of_a_landing_file_is_served_to_one_session_and_accounted(
    landing, records, as_parquet
):
    frame = text_frame(records)
    path = landing / "krx" / ("bars.parquet" if as_parquet else "bars.csv")
    for old in (landing / "krx").iterdir():
        old.unlink()
    if as_parquet:
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    files = FilesSource(str(landing))
    filed = files.sessions_in_file("krx", str(path))
    # One run per filing session (as the sensor launches them) serves every row exactly once.
    served = [files.daily_bars("krx", [day], []) for day in filed]
    assert sum(len(s) for s in served) == len(records)
    for day, bars in zip(filed, served, strict=True):
        assert_accounted(len(bars), bars, [day])
    # And one run over all of them serves the same rows.
    assert len(files.daily_bars("krx", filed, [])) == len(records)


@SETTINGS
@given(records=rows(KRX_SESSIONS, KRX_OFF_DAYS, fmt="%Y%m%d"))
def test_every_kis_row_is_stored_or_quarantined(records):
    raw = text_frame(records).with_columns(pl.col("symbol").fill_null(""))
    bars = kis_bars(raw)
    # Every row, of any day, stays in the frame; the base keeps the sessions asked for.
    assert len(bars) == len(records)
    assert_accounted(len(records), bars, KRX_SESSIONS)


# KRX's numbers are text with thousands separators (`79,600.00`).
NUMBERS_AS_TEXT = {"open", "high", "low", "close", "volume"}


@SETTINGS
@given(records=rows(KRX_SESSIONS, KRX_OFF_DAYS, fmt="%Y%m%d"))
def test_every_krx_board_row_is_stored_or_quarantined(records):
    """KRX sends every number as text with thousands separators; a board row per record."""
    fields = {column: vendor for vendor, column in KRX_FIELDS.items()}
    board = [
        {
            fields[c]: (f"{float(v):,.2f}" if c in NUMBERS_AS_TEXT and _plain(v) else v)
            for c, v in r.items()
        }
        for r in records
    ]
    bars = krx_bars(board, KRX_SESSIONS[0])
    assert len(bars) == len(records)
    assert_accounted(len(records), bars, KRX_SESSIONS)


def _plain(text: str) -> bool:
    try:
        return math.isfinite(float(text)) and text.strip() == text and "e" not in text.lower()
    except ValueError:
        return False


@pytest.fixture(scope="module")
def finnhub():
    with FakeFinnhub("fhk-hostile-key") as server:
        yield server


STAMPS = st.one_of(
    st.sampled_from([stamp_of(d, "utc_midnight") for d in [*US_SESSIONS, *US_OFF_DAYS]]),
    st.sampled_from([stamp_of(d, "new_york_open") for d in US_SESSIONS]),
    st.sampled_from([math.inf, -1e30, "abc", None, 10**20]),
)
NUMBERS = st.one_of(
    st.floats(min_value=1.0, max_value=1e4),
    st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -2.5, None]),
)


@SETTINGS
@given(candles=st.lists(st.tuples(STAMPS, NUMBERS, NUMBERS, NUMBERS, NUMBERS), max_size=12))
def test_every_finnhub_candle_is_stored_or_quarantined(finnhub, monkeypatch, candles):
    monkeypatch.setattr(breaker_module, "_SHARED", {})
    monkeypatch.setattr(limiter_module, "_SHARED", {})
    if not candles:
        return
    stamps, opens, highs, lows, closes = (list(c) for c in zip(*candles, strict=True))
    body = {"s": "ok", "t": stamps, "o": opens, "h": highs, "l": lows, "c": closes}
    body["v"] = [100] * len(stamps)
    finnhub.faults.clear()
    finnhub.faults.add(200, non_finite(body), path="/stock/candle")
    source = FinnhubSource("fhk-hostile-key", finnhub.url, rate=(1000, 1.0), retry=ONE_TRY)
    bars = source.daily_bars("us", US_SESSIONS, ["AAPL"])
    assert len(bars) == len(candles)
    assert_accounted(len(candles), bars, US_SESSIONS)


@pytest.fixture(scope="module")
def twelve_data():
    with FakeTwelveData() as server:
        yield server


def _fresh_providers(monkeypatch) -> None:
    monkeypatch.setattr(breaker_module, "_SHARED", {})
    monkeypatch.setattr(limiter_module, "_SHARED", {})


@SETTINGS
@given(records=rows(US_SESSIONS, US_OFF_DAYS))
def test_every_twelve_data_value_is_stored_or_quarantined(twelve_data, monkeypatch, records):
    """Twelve Data sends every number as text; a value row per hostile record."""
    _fresh_providers(monkeypatch)
    values = [
        {"datetime": r["trade_date"], **{c: r[c] for c in ("open", "high", "low", "close")}}
        | {"volume": r["volume"]}
        for r in records
    ]
    body = {"meta": {"exchange_timezone": "America/New_York"}, "values": values, "status": "ok"}
    twelve_data.faults.clear()
    twelve_data.faults.add(200, body, path="/time_series")
    source = TwelveDataSource(
        api_key=TWELVE_DATA_KEY, base_url=twelve_data.url, retry=ONE_TRY, requests=1000
    )
    bars = source.daily_bars("us", US_SESSIONS, ["AAPL"])
    assert len(bars) == len(records)
    assert_accounted(len(records), bars, US_SESSIONS)


JSON_VALUES = st.one_of(
    st.floats(min_value=1.0, max_value=1e4),
    st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -2.5, None, "abc", "12.5", True, [1]]),
)


@pytest.fixture(scope="module")
def yahoo():
    with FakeYahoo() as server:
        yield server


YAHOO_STAMPS = st.one_of(
    st.sampled_from([open_epoch(d) for d in [*US_SESSIONS, *US_OFF_DAYS]]),
    st.sampled_from([math.inf, -1e30, "abc", None, 10**20, True]),
)


@SETTINGS
@given(bars=st.lists(st.tuples(YAHOO_STAMPS, *[JSON_VALUES] * 5), max_size=12))
def test_every_yahoo_bar_is_stored_or_quarantined(yahoo, monkeypatch, bars):
    _fresh_providers(monkeypatch)
    # One bar per session: Yahoo's second bar of a session (open-stamped and live) is the
    # same bar's final values, kept alone by design.
    dated = [b for b in bars if isinstance(b[0], int) and not isinstance(b[0], bool)]
    bars = [b for b in bars if b not in dated] + list({b[0]: b for b in dated}.values())
    if not bars:
        return
    stamps, *columns = (list(c) for c in zip(*bars, strict=True))
    quote = dict(zip(("open", "high", "low", "close", "volume"), columns, strict=True))
    result = {"meta": {}, "timestamp": stamps, "indicators": {"quote": [quote]}}
    yahoo.faults.clear()
    body = non_finite({"chart": {"result": [result], "error": None}})
    yahoo.faults.add(200, body, path="/v8/finance/chart/AAPL")
    source = YahooSource(yahoo.url, rate=(1000, 1.0), retry=ONE_TRY, clock=lambda: 4e9)
    served = source.daily_bars("us", US_SESSIONS, ["AAPL"])
    assert len(served) == len(bars)
    assert_accounted(len(bars), served, US_SESSIONS)


def test_a_provider_sending_infinity_has_its_rows_quarantined_as_non_finite(finnhub, monkeypatch):
    monkeypatch.setattr(breaker_module, "_SHARED", {})
    monkeypatch.setattr(limiter_module, "_SHARED", {})
    day = US_SESSIONS[0]
    body = {"s": "ok", "t": [stamp_of(day, "utc_midnight")], "o": [10.0], "h": [math.inf]}
    body.update({"l": [9.0], "c": [10.0], "v": [100]})
    finnhub.faults.clear()
    finnhub.faults.add(200, non_finite(body), path="/stock/candle")
    assert b"Infinity" in non_finite(body)
    source = FinnhubSource("fhk-hostile-key", finnhub.url, rate=(1000, 1.0), retry=ONE_TRY)
    bars = source.daily_bars("us", [day], ["AAPL"])
    result = validate(standardise(bars))
    assert result.clean.is_empty()
    (row,) = result.quarantined.to_dicts()
    assert "finite_prices" in row["violations"]
    assert row["source"] == "finnhub" and row["symbol"] == "AAPL" and row["high"] == math.inf


def test_values_that_do_not_parse_are_kept_as_sent_in_the_quarantine(landing):
    text = (
        "symbol,trade_date,open,high,low,close,volume\n"
        "005930,2025-09-30,abc,110,90,100,10\n"
        "005930,2025-10-01,100,110,90,100,1.5\n"
        "000660,2025-10-01,100,110,90,100,1e20\n"
        '"",2025-10-01,100,110,90,100,10\n'
        "035420,2026-13-45,100,110,90,100,10\n"
        "035420,2025-10-04,100,110,90,100,10\n"
        "035420,2025-10-01,100,inf,90,100,10\n"
    )
    (landing / "krx" / "bad.csv").write_text(text)
    files = FilesSource(str(landing))
    sessions = [dt.date(2025, 9, 30), dt.date(2025, 10, 1), dt.date(2025, 10, 2)]
    bars = files.daily_bars("krx", sessions, [])
    rules = (*DAILY_PRICE_RULES, session_rule("trade_date", tuple(sessions)))
    result = validate(standardise(bars), rules)
    assert result.clean.is_empty()
    found = {
        (r["symbol"], r["raw"]): r["violations"]
        for r in result.quarantined.select("symbol", RAW, "violations").to_dicts()
    }
    assert "unparseable:open" in found[("005930", '{"open": "abc"}')]
    assert "unparseable:volume" in found[("005930", '{"volume": "1.5"}')]
    assert "unparseable:volume" in found[("000660", '{"volume": "1e20"}')]
    assert "non_empty_symbol" in found[("", None)]
    # 2026-13-45 has no session, so it travels with the file's last one (2025-10-02 here).
    assert "unparseable:trade_date" in found[("035420", '{"trade_date": "2026-13-45"}')]
    # Saturday 2025-10-04 is filed with the session before it, Thursday 2025-10-02.
    saturday = result.quarantined.filter(pl.col("trade_date") == dt.date(2025, 10, 4))
    assert saturday["violations"].to_list() == [["not_a_session"]]
    infinite = result.quarantined.filter(pl.col("high").is_infinite())
    assert infinite["violations"].to_list() == [["finite_prices"]]


def test_a_file_whose_dates_are_all_empty_keeps_its_rows(landing):
    text = "symbol,trade_date,open,high,low,close,volume\n005930,,1,1,1,1,1\n000660,,2,2,2,2,2\n"
    path = landing / "krx" / "undated.csv"
    path.write_text(text)
    files = FilesSource(str(landing))
    (filed,) = files.sessions_in_file("krx", str(path))
    bars = files.daily_bars("krx", [filed], [])
    assert len(bars) == 2
    result = validate(standardise(bars), (*DAILY_PRICE_RULES, session_rule("trade_date", (filed,))))
    assert result.clean.is_empty() and len(result.quarantined) == 2
    assert all("required_fields" in v for v in result.quarantined["violations"].to_list())


def test_a_universe_file_with_an_unreadable_date_names_file_field_and_value(tmp_path):
    from resources.sources.base import SourceError

    (tmp_path / "krx").mkdir()
    (tmp_path / "krx" / "universe.csv").write_text(
        "symbol,name,listing_date,delisting_date\n005930,Samsung,2026-13-45,\n"
    )
    with pytest.raises((SourceError, ValueError)) as caught:
        FilesSource(str(tmp_path)).universe("krx")
    message = str(caught.value)
    assert "universe.csv" in message and "listing_date" in message and "2026-13-45" in message
    assert "casting" not in message


def test_daily_prices_metadata_accounts_for_every_row(landing, lake, instance):
    from resources.market_data import MarketDataResource
    from tests.conftest import materialize

    day = "2025-10-02"
    # 40 good bars beside the two bad rows, so the session is complete enough to publish.
    good = "".join(f"{900000 + i},2025-10-02,100,110,90,100,10\n" for i in range(38))
    text = (
        "symbol,trade_date,open,high,low,close,volume\n"
        "005930,2025-10-02,100,110,90,100,10\n"
        "000660,2025-10-02,100,110,90,100,10\n"
        f"{good}"
        "000660,2025-10-04,100,110,90,100,10\n"
        "035420,2025-10-02,100,inf,90,100,abc\n"
    )
    (landing / "krx" / "a.csv").write_text(text)
    market_data = MarketDataResource(krx_source="files", landing_url=str(landing))
    for datasets, key in ((("universe",), None), (("daily_prices",), day)):
        result = materialize(
            "krx",
            datasets,
            lake=lake,
            market_data=market_data,
            instance=instance,
            partition_key=key,
        )
    materialization = result.asset_materializations_for_node("krx__daily_prices")[0]
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert (meta["sent"], meta["stored"], meta["quarantined"]) == (42, 40, 2)
    # Both rejected rows, the Saturday's included, are in the session's quarantine file, with
    # the text that did not parse.
    (path,) = (landing / "lake" / "quarantine" / "daily_prices").rglob("*.parquet")
    assert "date=2025-10-02" in str(path)
    quarantined = pl.read_parquet(path).sort("trade_date")
    assert quarantined["trade_date"].cast(pl.String).to_list() == ["2025-10-02", "2025-10-04"]
    assert quarantined["violations"].to_list() == [
        ["required_fields", "unparseable:volume", "finite_prices"],
        ["not_a_session"],
    ]
    assert quarantined[RAW].to_list() == ['{"volume": "abc"}', None]
