"""The one HTTP layer every provider client uses: pooled async httpx, a shared rate limiter,
retries with exponential backoff and jitter honouring Retry-After, and a circuit breaker.

Errors come out typed (errors.py) and scrubbed of secrets. Retry schedule: up to `attempts`
tries on 429, 5xx, timeouts, connection errors and malformed bodies; never on 4xx that cannot
succeed. When retries run out or the circuit is open the provider counts as down (ProviderDown),
which moves a fallback chain to its next source.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from .breaker import CircuitBreaker
from .errors import (
    BadRequest,
    NotFound,
    ProviderDown,
    ProviderError,
    RateLimited,
    SchemaDrift,
    Unauthorized,
)
from .limiter import SlidingWindowLimiter

# httpx logs every request URL at INFO; some providers put the API key in the query string.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Retry-After longer than this is not waited out inside one run: the provider counts as down.
MAX_RETRY_AFTER = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # the first try and three retries
    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.5


Classifier = Callable[[Any, httpx.Response], None]


class Redactor:
    def __init__(self, secrets: Sequence[str | None]):
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: rare for APIs, fall back to our own backoff


class ProviderHttp:
    """An async session against one provider. Use `async with ProviderHttp(...) as http:`."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        limiter: SlidingWindowLimiter,
        breaker: CircuitBreaker,
        secrets: Sequence[str | None] = (),
        retry: RetryPolicy = RetryPolicy(),
        timeout: float = 10.0,
        max_connections: int = 64,
    ):
        self.provider, self.base_url = provider, base_url.rstrip("/")
        self.limiter, self.breaker, self.retry = limiter, breaker, retry
        self.redact = Redactor(secrets)
        self._timeout, self._max_connections = timeout, max_connections
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ProviderHttp:
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(self._timeout, connect=min(5.0, self._timeout)),
            limits=httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
            ),
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return error.retry_after
        backoff = wait_exponential_jitter(
            initial=self.retry.initial, max=self.retry.maximum, jitter=self.retry.jitter
        )
        return backoff(state)

    async def request_json(
        self,
        method: str,
        endpoint: str,
        *,
        symbol: str | None = None,
        classify: Classifier | None = None,
        **kwargs,
    ) -> tuple[Any, httpx.Response]:
        """One logical request: retried, rate limited, breaker-guarded; returns (payload, resp)."""

        def retryable(error: BaseException) -> bool:
            if isinstance(error, RateLimited) and (error.retry_after or 0) > MAX_RETRY_AFTER:
                return False
            return isinstance(error, ProviderError) and error.retryable

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.retry.attempts),
                wait=self._wait,
                retry=retry_if_exception(retryable),
                reraise=True,
            ):
                with attempt:
                    return await self._once(method, endpoint, symbol, classify, kwargs)
        except ProviderError as error:
            if error.retryable:
                raise ProviderDown(
                    f"{error} (gave up after {self.retry.attempts} attempts)"
                ) from error
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, method, endpoint, symbol, classify, kwargs):
        assert self._client is not None, "use ProviderHttp inside `async with`"
        self.breaker.before_call()
        await self.limiter.acquire()
        try:
            response = await self._client.request(method, endpoint, **kwargs)
            payload = self._interpret(response, endpoint, symbol, classify)
        except ProviderError as error:
            # Outages count against the circuit; rate limits and client errors do not.
            if error.retryable and not isinstance(error, RateLimited):
                self.breaker.record_failure()
            raise
        except httpx.HTTPError as error:
            self.breaker.record_failure()
            kind = type(error).__name__
            raise ProviderError(
                self.provider, endpoint, symbol, self.redact(f"{kind}: {error}")
            ) from None
        self.breaker.record_success()
        return payload, response

    def _interpret(self, response, endpoint, symbol, classify) -> Any:
        where = (self.provider, endpoint, symbol)
        status = response.status_code
        body = self.redact(response.text[:300])
        try:
            payload = response.json() if response.content else None
        except json.JSONDecodeError:
            if status < 400:
                raise ProviderError(*where, f"malformed JSON (HTTP {status}): {body!r}") from None
            payload = None
        if status == 429:
            raise RateLimited(*where, f"HTTP 429: {body}", retry_after=_retry_after(response))
        if classify is not None:
            # Provider codes come in any status (KIS's EGW00201 in a 500 or a 200, Twelve
            # Data's errors in a 200): the client's classifier reads them first.
            classify(payload, response)
        if status in (401, 403):
            raise Unauthorized(*where, f"HTTP {status}: {body}")
        if status == 404:
            raise NotFound(*where, f"HTTP 404: {body}")
        if status >= 500:
            raise ProviderError(*where, f"HTTP {status}: {body}")
        if status >= 400:
            raise BadRequest(*where, f"HTTP {status}: {body}")
        return payload

    def schema_error(self, endpoint: str, symbol: str | None, detail: str) -> SchemaDrift:
        return SchemaDrift(self.provider, endpoint, symbol, self.redact(detail))
