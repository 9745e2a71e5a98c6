"""A provider's key never leaks: every error path of every provider is fed bodies that echo the
key (raw, URL-encoded, base64, in a Basic auth pair, JSON-escaped, in a redirect, padded across
every cut, cut short), and no 6-character piece of the key may appear in the exception, the Python
logs, a failed run's event log and compute logs, metadata, the lake or the alert sent."""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import traceback
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from checks.schemas import UNIVERSE
from marketpipe_assets.alerting import failure_alerts
from resources.collector.feeds import KisFeed
from resources.market_data import MarketDataResource
from resources.providers import breaker as breaker_module
from resources.providers import limiter as limiter_module
from resources.providers.finnhub import FinnhubSource
from resources.providers.http import RetryPolicy
from resources.providers.kis import KisSource
from resources.providers.krx import KrxSource
from resources.providers.twelvedata import TwelveDataSource
from tests.conftest import Runner, Sensor, recent_sessions
from tests.fakes.finnhub import FakeFinnhub
from tests.fakes.hostile import encodings, secret_echoes
from tests.fakes.kis import DAILY, FakeKis
from tests.fakes.krx import FakeKrx
from tests.fakes.twelvedata import FakeTwelveData
from tests.fakes.webhook import FakeWebhook
from tests.fakes.ws_finnhub import FakeFinnhubWs


def random_key(prefix: str) -> str:
    """Random, so no 6-character piece occurs by chance; '+/=' change when encoded."""
    return f"{prefix}{secrets.token_hex(8)}+/={secrets.token_hex(6)}"


KEYS = {
    "finnhub": random_key("fh"),
    "twelvedata": random_key("td"),
    "krx": random_key("kx"),
    "kis_key": random_key("ka"),
    "kis_secret": random_key("ks"),
}
ONE_TRY = RetryPolicy(attempts=1, initial=0.0, jitter=0.0)
US_SYMBOL, KRX_SYMBOL = "AAPL", "005930"


def pieces(secret: str, n: int = 6) -> set[str]:
    return {secret[i : i + n] for i in range(len(secret) - n + 1)}


def assert_clean(text: str, *secrets_: str) -> None:
    for secret in secrets_:
        leaked = sorted(p for p in pieces(secret) if p in text)
        assert not leaked, f"pieces {leaked} of a secret in: {text[:2000]}"
        for name, form in encodings(secret).items():
            assert form not in text, f"{name} form of a secret in: {text[:2000]}"


def exception_text(error: BaseException) -> str:
    texts = ["".join(traceback.format_exception(error)), repr(error)]
    for link in (error.__cause__, error.__context__):
        if link is not None:
            texts.append(exception_text(link))
    return "\n".join(texts)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path_factory):
    monkeypatch.setattr(breaker_module, "_SHARED", {})
    monkeypatch.setattr(limiter_module, "_SHARED", {})
    monkeypatch.setenv("MARKETPIPE_RETRY_INITIAL_SECONDS", "0")
    monkeypatch.setenv("MARKETPIPE_RETRY_MAX_SECONDS", "0")
    monkeypatch.setenv("MARKETPIPE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def servers():
    with (
        FakeFinnhub(KEYS["finnhub"]) as finnhub,
        FakeTwelveData(KEYS["twelvedata"]) as twelvedata,
        FakeKrx(KEYS["krx"]) as krx,
        FakeKis(KEYS["kis_key"], KEYS["kis_secret"]) as kis,
    ):
        yield {"finnhub": finnhub, "twelvedata": twelvedata, "krx": krx, "kis": kis}


def sources(servers, tmp_path_factory):
    us_day = dt.date.fromisoformat(recent_sessions("us", 1)[0])
    krx_day = dt.date.fromisoformat(recent_sessions("krx", 1)[0])
    cache = tmp_path_factory.getbasetemp() / "cache"
    return {
        "finnhub": (
            FinnhubSource(KEYS["finnhub"], servers["finnhub"].url, rate=(100, 1.0), retry=ONE_TRY),
            "/stock",
            lambda s: s.daily_bars("us", [us_day], [US_SYMBOL]),
        ),
        "twelvedata": (
            TwelveDataSource(
                api_key=KEYS["twelvedata"],
                base_url=servers["twelvedata"].url,
                requests=100,
                per_seconds=1.0,
                retry=ONE_TRY,
            ),
            "/time_series",
            lambda s: s.daily_bars("us", [us_day], [US_SYMBOL]),
        ),
        "krx": (
            KrxSource(api_key=KEYS["krx"], base_url=servers["krx"].url, retry=ONE_TRY),
            "/svc",
            lambda s: s.daily_bars("krx", [krx_day], [KRX_SYMBOL]),
        ),
        "kis": (
            KisSource(
                KEYS["kis_key"],
                KEYS["kis_secret"],
                servers["kis"].url,
                retry=ONE_TRY,
                cache_dir=cache,
                rate=(100, 1.0),
            ),  # fmt: skip
            DAILY,
            lambda s: s.daily_bars("krx", [krx_day], [KRX_SYMBOL]),
        ),
    }


def provider_secrets(provider: str) -> tuple[str, ...]:
    if provider == "kis":
        return (KEYS["kis_key"], KEYS["kis_secret"])
    return (KEYS[provider],)


CASES = [
    (provider, name, fault)
    for provider in ("finnhub", "twelvedata", "krx", "kis")
    for name, fault in secret_echoes(
        KEYS["kis_secret"] if provider == "kis" else KEYS[provider],
        KEYS["kis_key"] if provider == "kis" else "user",
    )
]


@pytest.mark.parametrize(
    ("provider", "name", "fault"), CASES, ids=[f"{p}-{n}" for p, n, _ in CASES]
)
def test_no_piece_of_a_key_in_any_error_or_log(
    provider, name, fault, servers, tmp_path_factory, caplog
):
    caplog.set_level(logging.DEBUG)
    source, path, call = sources(servers, tmp_path_factory)[provider]
    server = servers[provider]
    server.faults.clear()
    server.faults.add(**fault, path=path, times=2)
    try:
        with pytest.raises(Exception) as caught:
            call(source)
    finally:
        server.faults.clear()
    assert_clean(exception_text(caught.value) + caplog.text, *provider_secrets(provider))


def test_kis_websocket_approval_error_echoing_the_secret_is_masked(servers):
    import asyncio

    kis = servers["kis"]
    echo = f"refused appkey={KEYS['kis_key']} secretkey={KEYS['kis_secret']}" + "x" * 290
    kis.faults.add(403, echo.encode(), path="/oauth2/Approval")
    feed = KisFeed(KEYS["kis_key"], KEYS["kis_secret"], [KRX_SYMBOL], kis.url, "ws://unused")
    with pytest.raises(ConnectionError) as caught:
        asyncio.run(feed._approval_key())
    assert_clean(exception_text(caught.value), KEYS["kis_key"], KEYS["kis_secret"])


def test_a_websocket_error_frame_and_close_reason_echoing_the_token_are_masked():
    import asyncio

    import websockets

    from resources.collector.feeds import FinnhubFeed

    token = KEYS["finnhub"]
    error = json.dumps({"type": "error", "msg": f"Invalid token {token}"})
    reason = f"policy: token={token}"[:60]  # close reasons are short: the token gets cut
    with FakeFinnhubWs(token, [error], [US_SYMBOL], close_with=(1008, reason)) as server:
        feed = FinnhubFeed(token, [US_SYMBOL], server.url)

        async def listen() -> list[str]:
            logged = []  # what the collector's runner logs: notes, then the connection error
            connection = await feed.open()
            for message in feed.subscriptions():
                await connection.send(message)
            try:
                async for text in connection:
                    note = feed.parse(text, 0).note
                    if note:
                        logged.append(feed.redact(note))
                await connection.recv()
            except websockets.WebSocketException as exc:
                logged.append(feed.redact(f"{type(exc).__name__}: {exc}"))
            return logged

        logged = asyncio.run(listen())
    assert any("error frame" in line for line in logged)
    assert any("1008" in line for line in logged), logged
    assert_clean("\n".join(logged), token)


def write_universe(path: Path, symbols: list[str]) -> str:
    n = len(symbols)
    pl.DataFrame(
        {
            "symbol": symbols,
            "name": symbols,
            "listing_date": [dt.date(2000, 1, 3)] * n,
            "delisting_date": [None] * n,
        },
        schema=UNIVERSE,
    ).write_csv(path)
    return str(path)


ENV = {
    "finnhub": ("FINNHUB_API_KEY", "FINNHUB_BASE_URL"),
    "twelvedata": ("TWELVEDATA_API_KEY", "TWELVEDATA_BASE_URL"),
    "krx": ("KRX_API_KEY", "KRX_BASE_URL"),
}


@pytest.mark.parametrize("provider", ["finnhub", "twelvedata", "krx", "kis"])
def test_a_failed_run_keeps_no_piece_of_the_key_anywhere(
    provider, servers, tmp_path, lake, monkeypatch, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    market = "us" if provider in ("finnhub", "twelvedata") else "krx"
    symbol = US_SYMBOL if market == "us" else KRX_SYMBOL
    if provider == "kis":
        monkeypatch.setenv("KIS_APP_KEY", KEYS["kis_key"])
        monkeypatch.setenv("KIS_APP_SECRET", KEYS["kis_secret"])
        monkeypatch.setenv("KIS_BASE_URL", servers["kis"].url)
        path = DAILY
    else:
        key_var, url_var = ENV[provider]
        monkeypatch.setenv(key_var, KEYS[provider])
        monkeypatch.setenv(url_var, servers[provider].url)
        path = None
    secret = KEYS["kis_secret"] if provider == "kis" else KEYS[provider]
    partner = KEYS["kis_key"] if provider == "kis" else "user"
    server = servers[provider]
    server.faults.clear()
    # Every attempt gets another echo: the last one is what the run reports.
    for _, fault in secret_echoes(secret, partner):
        if fault["status"] >= 500:
            server.faults.add(**fault, path=path)
    server.faults.add(503, f"down {secret}".encode(), path=path, times=10**6)
    hook_dir = tmp_path / "instance"
    hook_dir.mkdir()
    with FakeWebhook() as hook, dg.instance_for_test(temp_dir=str(hook_dir)) as instance:
        monkeypatch.setenv("MARKETPIPE_ALERT_WEBHOOK_URL", f"{hook.url}/alerts")
        sensor = Sensor(failure_alerts, instance, lake=lake)
        market_data = MarketDataResource(
            **{f"{market}_source": provider},
            **{f"{market}_universe": write_universe(tmp_path / "u.csv", [symbol])},
            landing_url="unused-landing",
        )
        runs, day = Runner(lake, market_data, instance), recent_sessions(market, 1)[0]
        try:
            result = runs(market, "universe", "daily_prices", days=(day, day))
        finally:
            server.faults.clear()
        assert not result.success
        assert sensor.tick() == []
        (post,) = hook.posts("/alerts")
        texts = [json.dumps(post.body), caplog.text, "".join(capfd.readouterr())]
        texts += [dg.serialize_value(e) for e in instance.all_logs(result.run_id)]
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert provider in failure.step_failure_data.error.to_string()  # the run did fail on it
    # The instance's files: its SQLite event log and the run's compute logs.
    files = [p for p in Path(hook_dir).rglob("*") if p.is_file()]
    assert any("compute_logs" in str(p) for p in files), files
    files += [p for p in Path(lake.url).rglob("*") if p.is_file()]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in files]
    assert_clean("\n".join(texts), *provider_secrets(provider))
