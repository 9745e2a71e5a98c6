"""The one HTTP layer every provider client uses: pooled async httpx, a shared rate limiter,
retries with exponential backoff and jitter honouring Retry-After, and a circuit breaker.

Errors come out typed (errors.py) and scrubbed of secrets. Retry schedule: up to `attempts`
tries on 429, 5xx, timeouts, connection errors and malformed bodies; never on 4xx that cannot
succeed. When retries run out or the circuit is open the provider counts as down (ProviderDown),
which moves a fallback chain to its next source.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from checks.errors import ConfigurationError

from .breaker import CircuitBreaker, shared_breaker
from .errors import (
    BadRequest,
    DeadlineExceeded,
    NotFound,
    ProviderDown,
    ProviderError,
    RateLimited,
    SchemaDrift,
    Unauthorized,
    _where,
)
from .limiter import SlidingWindowLimiter, shared_limiter
from .masking import Redactor as Redactor

# httpx logs every request URL at INFO, httpcore every header at DEBUG; some providers put the
# API key in the query string, and a redirect's Location may echo it.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

# Retry-After longer than this is not waited out inside one run: the provider counts as down.
MAX_RETRY_AFTER = 120.0
# Each HTTP request (connect, first byte and the whole body) must be over within this many
# seconds; httpx's own timeouts limit each read only, so a server trickling bytes never ends.
DEADLINE_VARIABLE = "MARKETPIPE_HTTP_DEADLINE_SECONDS"
DEFAULT_DEADLINE = 60.0
BODY_EXCERPT = 300  # characters of a body quoted in an error, after masking
DETAIL_LIMIT = 1000  # characters of any error detail, after masking
# Request headers and query parameters whose values are credentials, whatever the provider.
SECRET_HEADERS = frozenset({"authorization", "appkey", "appsecret", "x-finnhub-token", "auth_key"})
SECRET_PARAMS = frozenset({"apikey", "token", "crumb", "appkey", "appsecret"})


def credential_id(*parts: str | None) -> str:
    """A stable, non-reversible id of a credential, to key limiters and token caches."""
    return hashlib.sha256("\0".join(p or "" for p in parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RetryPolicy:
    """Wait before retry n (1, 2, ...): min(maximum, initial * 2**(n-1) + uniform(0, jitter))."""

    attempts: int = 4  # the first try and three retries
    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.5

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default schedule, shortened or stretched by MARKETPIPE_RETRY_INITIAL_SECONDS and
        MARKETPIPE_RETRY_MAX_SECONDS (the jitter never exceeds the initial wait)."""
        initial = seconds_from_env("MARKETPIPE_RETRY_INITIAL_SECONDS", cls.initial)
        maximum = seconds_from_env("MARKETPIPE_RETRY_MAX_SECONDS", cls.maximum)
        return cls(initial=initial, maximum=maximum, jitter=min(cls.jitter, initial))


def seconds_from_env(variable: str, default: float) -> float:
    """A duration in seconds >= 0 from the environment; a bad value names the variable."""
    raw = os.environ.get(variable, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise ConfigurationError(
            f"{variable}={raw!r}: use a number of seconds >= 0, e.g. {default}, or unset it"
        )
    return value


Classifier = Callable[[Any, httpx.Response], None]


def deadline_from_env() -> float:
    """MARKETPIPE_HTTP_DEADLINE_SECONDS (> 0), DEFAULT_DEADLINE when unset."""
    deadline = seconds_from_env(DEADLINE_VARIABLE, DEFAULT_DEADLINE)
    if deadline <= 0:
        raise ConfigurationError(
            f"{DEADLINE_VARIABLE}={deadline:g}: use a number of seconds > 0, "
            f"e.g. {DEFAULT_DEADLINE:g}, or unset it"
        )
    return deadline


def _in_our_words(error: httpx.HTTPError, detail: str) -> str:
    """What an httpx failure means for the user, then httpx's own words (masked)."""
    if isinstance(error, httpx.RemoteProtocolError):
        return f"the connection closed before the whole answer arrived (truncated): {detail}"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect: {detail}"
    if isinstance(error, httpx.TimeoutException):
        return f"timed out: {detail}"
    return detail


def _attempts(n: int) -> str:
    return f"{n} attempt" + ("s" if n != 1 else "")


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The response's Retry-After in seconds, None when absent or not a number."""
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
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        max_connections: int = 64,
        deadline: float | None = None,
    ):
        self.provider, self.base_url = provider, base_url.rstrip("/")
        self.deadline = deadline if deadline is not None else deadline_from_env()
        self.limiter, self.breaker = limiter, breaker
        self.retry = retry if retry is not None else RetryPolicy.from_env()
        self.redact = Redactor(secrets)
        self._timeout, self._max_connections = timeout, max_connections
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def shared(
        cls,
        provider: str,
        base_url: str,
        *,
        credential: Sequence[str | None],
        requests: int,
        per_seconds: float,
        secrets: Sequence[str | None] = (),
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        max_connections: int = 64,
        deadline: float | None = None,
    ) -> ProviderHttp:
        """A session on the process's one limiter for this provider and credential and its one
        breaker, so every session with the same key shares the key's budget and circuit.

        `credential` is what identifies the key to the provider (e.g. the API key, or app key
        and base URL); the limiter is keyed by its credential_id, never by the key itself.
        """
        return cls(
            provider,
            base_url,
            limiter=shared_limiter(provider, credential_id(*credential), requests, per_seconds),
            breaker=shared_breaker(provider),
            secrets=secrets,
            retry=retry,
            timeout=timeout,
            max_connections=max_connections,
            deadline=deadline,
        )

    async def __aenter__(self) -> ProviderHttp:
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(
                min(self._timeout, self.deadline), connect=min(5.0, self._timeout, self.deadline)
            ),
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
        backoff = self.retry.initial * 2 ** (state.attempt_number - 1)
        return min(self.retry.maximum, backoff + random.uniform(0, self.retry.jitter))

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

        attempts, last = 0, None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.retry.attempts),
                wait=self._wait,
                retry=retry_if_exception(retryable),
                reraise=True,
            ):
                with attempt:
                    try:
                        return await self._once(method, endpoint, symbol, classify, kwargs)
                    except ProviderError as error:
                        attempts, last = attempts + 1, error
                        raise
        except ProviderError as error:
            if isinstance(error, RateLimited) and (error.retry_after or 0) > MAX_RETRY_AFTER:
                raise ProviderDown(
                    f"{error} (Retry-After {error.retry_after:.0f} s is longer than the "
                    f"{MAX_RETRY_AFTER:.0f} s a run waits)"
                ) from error
            if error.retryable:
                raise ProviderDown(f"{error} (gave up after {_attempts(attempts)})") from error
            raise
        except ProviderDown as down:
            if last is None:
                raise
            # The circuit opened between retries: report the failure that led to it.
            raise ProviderDown(f"{last} (gave up after {_attempts(attempts)}; {down})") from last
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, method, endpoint, symbol, classify, kwargs):
        assert self._client is not None, "use ProviderHttp inside `async with`"
        where = (self.provider, self.redact(endpoint), symbol)
        self.breaker.before_call(where=_where(*where))
        self._learn_credentials(kwargs)
        try:
            # The slot is held until the reply is in (limiter.py says why).
            async with self.limiter.slot():
                response = await self._within_deadline(method, endpoint, symbol, kwargs)
            payload = self._interpret(response, endpoint, symbol, classify)
        except ProviderError as error:
            # Whoever raised it (a classifier too), what leaves the layer is masked and short.
            error.scrub(self.redact, DETAIL_LIMIT)
            # Outages count against the circuit. Rate limits and client errors do not: the
            # provider answered, which is all the circuit asks (and it ends a half-open probe).
            if error.retryable and not isinstance(error, RateLimited):
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            raise
        except httpx.HTTPError as error:
            self.breaker.record_failure()
            detail = self.redact.excerpt(f"{type(error).__name__}: {error}", DETAIL_LIMIT)
            raise ProviderError(*where, _in_our_words(error, detail)) from None
        except BaseException:
            # Cancelled, or a classifier bug: no verdict, but a half-open probe must not stay
            # claimed forever.
            self.breaker.release()
            raise
        self.breaker.record_success()
        return payload, response

    def _learn_credentials(self, kwargs: dict) -> None:
        """Credentials a request carries are secrets even if the client did not list them."""
        headers = {str(k).lower(): str(v) for k, v in (kwargs.get("headers") or {}).items()}
        params = {str(k).lower(): str(v) for k, v in (kwargs.get("params") or {}).items()}
        for name, value in [*headers.items(), *params.items()]:
            if name in SECRET_HEADERS or name in SECRET_PARAMS:
                self.redact.add(value)
                if " " in value:  # "Bearer <token>", "Basic <base64>"
                    self.redact.add(value.split(" ", 1)[1])

    async def _within_deadline(self, method, endpoint, symbol, kwargs) -> httpx.Response:
        """Send and read the whole body within `deadline` seconds, or DeadlineExceeded."""
        assert self._client is not None
        started, received, headers_in = time.monotonic(), 0, False
        try:
            async with asyncio.timeout(self.deadline):
                request = self._client.build_request(method, endpoint, **kwargs)
                response = await self._client.send(request, stream=True)
                headers_in = True
                try:
                    chunks = []
                    async for chunk in response.aiter_raw():
                        chunks.append(chunk)
                        received += len(chunk)
                finally:
                    await response.aclose()
        except TimeoutError:
            stage = (
                f"the body was still arriving ({received} bytes so far)"
                if headers_in
                else "no answer had begun"
            )
            raise DeadlineExceeded(
                self.provider,
                self.redact(endpoint),
                symbol,
                f"no complete answer within the {self.deadline:g} s deadline "
                f"({DEADLINE_VARIABLE}); {stage} after {time.monotonic() - started:.1f} s: "
                "the provider is stalled or very slow",
            ) from None
        # The body as received, undecoded: the new response decodes it once, as httpx would.
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=b"".join(chunks),
            request=response.request,
        )

    def _interpret(self, response, endpoint, symbol, classify) -> Any:
        where = (self.provider, self.redact(endpoint), symbol)
        status = response.status_code

        def body() -> str:  # only on the error paths: masking costs more than a success needs
            return self.redact.excerpt(response.text, BODY_EXCERPT)

        try:
            payload = response.json() if response.content else None
        except ValueError:  # JSONDecodeError, or bytes that are not text
            if status < 400:
                raise ProviderError(
                    *where, f"malformed or truncated JSON (HTTP {status}): {body()!r}"
                ) from None
            payload = None
        if status == 429:
            raise RateLimited(
                *where, f"HTTP 429: {body()}", retry_after=retry_after_seconds(response)
            )
        if classify is not None:
            # Provider codes come in any status (KIS's EGW00201 in a 500 or a 200, Twelve
            # Data's errors in a 200): the client's classifier reads them first.
            classify(payload, response)
        if status in (401, 403):
            raise Unauthorized(*where, f"HTTP {status}: {body()}")
        if status == 404:
            raise NotFound(*where, f"HTTP 404: {body()}")
        if status >= 500:
            raise ProviderError(*where, f"HTTP {status}: {body()}")
        if status >= 400:
            raise BadRequest(*where, f"HTTP {status}: {body()}")
        if 300 <= status < 400:
            location = self.redact.excerpt(response.headers.get("location", "?"), BODY_EXCERPT)
            raise BadRequest(
                *where,
                f"HTTP {status}: redirected to {location}, which is not followed: check the "
                f"{self.provider.upper()}_BASE_URL setting",
            )
        return payload

    def excerpt(self, value: Any, limit: int = 200) -> str:
        """A payload or text quoted in an error: masked, then shortened."""
        return self.redact.excerpt(str(value), limit)

    def schema_error(self, endpoint: str, symbol: str | None, detail: str) -> SchemaDrift:
        return SchemaDrift(self.provider, endpoint, symbol, self.redact(detail))

    async def send(
        self, method: str, endpoint: str, *, symbol: str | None = None, **kwargs
    ) -> httpx.Response:
        """One request under the rate limit and circuit, not retried and not parsed: for
        handshakes whose answers are not JSON (Yahoo's cookie and crumb). A 5xx counts against
        the circuit; the caller judges the answer. Transport errors come out as ProviderError."""
        assert self._client is not None, "use ProviderHttp inside `async with`"
        self.breaker.before_call(where=_where(self.provider, self.redact(endpoint), symbol))
        try:
            async with self.limiter.slot():
                # The same overall deadline as every other request: a trickling handshake
                # must not hang the run either.
                response = await self._within_deadline(method, endpoint, symbol, kwargs)
        except httpx.HTTPError as error:
            self.breaker.record_failure()
            detail = self.redact(f"{type(error).__name__}: {error}")
            raise ProviderError(self.provider, self.redact(endpoint), symbol, detail) from None
        except BaseException:
            self.breaker.release()
            raise
        if response.status_code >= 500:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        return response
