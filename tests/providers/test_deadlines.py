"""Every provider request ends by its deadline, and hostile bodies fail in our words: a server
that trickles a byte at a time, one that cuts the body short of its Content-Length, and JSON
numbers `Infinity`/`NaN` that must reach validation as what they are."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math

import pytest

from checks.errors import ConfigurationError
from marketpipe_assets.retries import is_retryable
from resources.collector.feeds import KisFeed
from resources.providers import breaker as breaker_module
from resources.providers import limiter as limiter_module
from resources.providers.breaker import CircuitBreaker
from resources.providers.errors import DeadlineExceeded, ProviderDown
from resources.providers.finnhub import FinnhubSource
from resources.providers.http import ProviderHttp, RetryPolicy, deadline_from_env
from resources.providers.limiter import SlidingWindowLimiter
from resources.sources.base import SourceUnavailable
from tests.conftest import recent_sessions
from tests.fakes.finnhub import FakeFinnhub, stamp_of
from tests.fakes.hostile import non_finite
from tests.fakes.server import FakeProvider, Reply, Request
from tests.fakes.ws_kis import APPROVAL, FakeKisApproval

KEY = "fhk-Q7zP2v9XkR4mW1"
ONE_TRY = RetryPolicy(attempts=1, initial=0.0, jitter=0.0)
BODY = {"ok": True, "values": list(range(40))}


class Echo(FakeProvider):
    def handle(self, request: Request) -> Reply:
        return Reply(200, BODY)


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    monkeypatch.setattr(breaker_module, "_SHARED", {})
    monkeypatch.setattr(limiter_module, "_SHARED", {})
    monkeypatch.delenv("MARKETPIPE_HTTP_DEADLINE_SECONDS", raising=False)


def fetch(url: str, *, deadline: float | None = None, retry=ONE_TRY):
    async def go():
        session = ProviderHttp(
            "fakeprov",
            url,
            limiter=SlidingWindowLimiter(100, 1.0),
            breaker=CircuitBreaker("fakeprov"),
            retry=retry,
            deadline=deadline,
        )
        async with session as http:
            payload, _ = await http.request_json("GET", "/v1/quote", symbol="AAPL")
            return payload

    return asyncio.run(go())


def test_a_trickling_server_meets_the_deadline_naming_provider_endpoint_and_symbol():
    with Echo() as server:
        server.faults.add(200, BODY, trickle=0.3)  # ~300 bytes: a minute and a half at full length
        with pytest.raises(ProviderDown) as caught:
            fetch(server.url, deadline=1.0)
    message = str(caught.value)
    assert "fakeprov /v1/quote [AAPL]" in message
    assert "1 s deadline" in message and "MARKETPIPE_HTTP_DEADLINE_SECONDS" in message
    assert "body was still arriving" in message
    assert isinstance(caught.value.__cause__, DeadlineExceeded)
    # An outage: the fallback chain moves on and the step retry policy retries it.
    assert isinstance(caught.value, SourceUnavailable) and is_retryable(caught.value)
    assert is_retryable(caught.value.__cause__)


def test_a_server_that_never_answers_meets_the_deadline_too():
    with Echo() as server:
        server.faults.add(200, BODY, delay=5.0)
        with pytest.raises(ProviderDown, match="no answer had begun"):
            fetch(server.url, deadline=1.0)


def test_the_deadline_is_retried_like_any_outage_and_the_next_answer_is_used():
    with Echo() as server:
        server.faults.add(200, BODY, trickle=0.3)
        assert fetch(server.url, deadline=1.0, retry=RetryPolicy(attempts=2, initial=0.0)) == BODY
        assert server.count("/v1/quote") == 2


def test_the_deadline_comes_from_the_environment(monkeypatch):
    assert deadline_from_env() == 60.0
    monkeypatch.setenv("MARKETPIPE_HTTP_DEADLINE_SECONDS", "1")
    assert deadline_from_env() == 1.0
    with Echo() as server:
        server.faults.add(200, BODY, trickle=0.3)
        with pytest.raises(ProviderDown, match="within the 1 s deadline"):
            fetch(server.url)
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv("MARKETPIPE_HTTP_DEADLINE_SECONDS", bad)
        with pytest.raises(ConfigurationError, match="MARKETPIPE_HTTP_DEADLINE_SECONDS"):
            deadline_from_env()


def test_a_provider_client_names_its_endpoint_and_symbol_on_the_deadline(monkeypatch):
    monkeypatch.setenv("MARKETPIPE_HTTP_DEADLINE_SECONDS", "1")
    day = dt.date.fromisoformat(recent_sessions("us", 1)[0])
    with FakeFinnhub(KEY) as server:
        server.faults.add(200, {"s": "ok"}, trickle=0.5, path="/stock/candle")
        source = FinnhubSource(KEY, server.url, rate=(100, 1.0), retry=ONE_TRY)
        with pytest.raises(ProviderDown) as caught:
            source.daily_bars("us", [day], ["AAPL"])
    assert "finnhub /stock/candle [AAPL]" in str(caught.value)
    assert "deadline" in str(caught.value)


@pytest.mark.parametrize("keep", [0, 5, 20])
def test_a_body_cut_short_of_its_content_length_is_a_clear_error_not_a_json_error(keep):
    with Echo() as server:
        server.faults.add(200, BODY, truncate=keep)
        with pytest.raises(ProviderDown) as caught:
            fetch(server.url, deadline=5.0)
    message = str(caught.value)
    assert "fakeprov /v1/quote [AAPL]" in message
    assert "truncated" in message and "JSONDecodeError" not in message


def test_a_body_that_is_cut_json_is_named_malformed_or_truncated():
    with Echo() as server:
        server.faults.add(200, json.dumps(BODY).encode()[:15])  # honest length, cut JSON
        with pytest.raises(ProviderDown) as caught:
            fetch(server.url, deadline=5.0)
    message = str(caught.value)
    assert "fakeprov /v1/quote [AAPL]: malformed or truncated JSON" in message
    assert "JSONDecodeError" not in message


def test_infinity_and_nan_prices_reach_validation_as_non_finite():
    days = [dt.date.fromisoformat(d) for d in recent_sessions("us", 2)]
    with FakeFinnhub(KEY) as server:
        stamps = [stamp_of(d, "utc_midnight") for d in days]
        candle = {
            "s": "ok",
            "t": stamps,
            "o": [10.0, 10.0],
            "h": [math.inf, 11.0],
            "l": [9.0, 9.0],
            "c": [10.5, math.nan],
            "v": [100, 100],
        }
        body = non_finite(candle)
        assert b"Infinity" in body and b"NaN" in body
        server.faults.add(200, body, path="/stock/candle")
        bars = FinnhubSource(KEY, server.url, rate=(100, 1.0), retry=ONE_TRY).daily_bars(
            "us", days, ["AAPL"]
        )
    assert len(bars) == 2  # nothing dropped, nothing made up
    first, second = bars.sort("trade_date").to_dicts()
    assert first["high"] == math.inf
    # NaN is not a price: it arrives as a missing value or NaN, never as a number.
    assert second["close"] is None or math.isnan(second["close"])


def test_the_kis_approval_request_meets_the_deadline_too(monkeypatch):
    monkeypatch.setenv("MARKETPIPE_HTTP_DEADLINE_SECONDS", "1")
    with FakeKisApproval("kis-app-key-7Q2", "kis-app-secret-9Z4") as server:
        server.faults.add(200, {"approval_key": "k" * 200}, trickle=0.3, path=APPROVAL)
        feed = KisFeed(
            "kis-app-key-7Q2", "kis-app-secret-9Z4", ["005930"], server.url, "ws://127.0.0.1:1"
        )
        with pytest.raises(ConnectionError) as caught:
            asyncio.run(feed._approval_key())
    message = str(caught.value)
    assert "kis /oauth2/Approval" in message and "1 s deadline" in message
    assert "MARKETPIPE_HTTP_DEADLINE_SECONDS" in message
    assert "kis-app-secret-9Z4" not in message
    # A ConnectionError is what the collector reconnects on, with backoff.
