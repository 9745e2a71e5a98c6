"""Typed provider errors. Messages name provider, endpoint and symbol, never a secret."""

from __future__ import annotations

from resources.sources.base import SourceError, SourceUnavailable


def _where(provider: str, endpoint: str, symbol: str | None) -> str:
    return f"{provider} {endpoint}" + (f" [{symbol}]" if symbol else "")


class ProviderError(SourceError):
    """The provider answered with an error it may not repeat (5xx, error body): retryable."""

    retryable = True

    def __init__(self, provider: str, endpoint: str, symbol: str | None, detail: str):
        self.provider, self.endpoint, self.symbol, self.detail = provider, endpoint, symbol, detail
        super().__init__(f"{_where(provider, endpoint, symbol)}: {detail}")

    def scrub(self, redact, limit: int) -> None:
        """Mask secrets in the message (then cut it to about `limit` characters), in place."""
        self.endpoint, self.detail = redact(self.endpoint), redact.excerpt(self.detail, limit)
        self.args = (f"{_where(self.provider, self.endpoint, self.symbol)}: {self.detail}",)


class DeadlineExceeded(ProviderError):
    """No complete answer within the request deadline (a stalled or trickling server): an
    outage, retried, then the provider counts as down."""


class RateLimited(ProviderError):
    """429 or a rate-limit code in the body; `retry_after` seconds when the provider said."""

    def __init__(self, *args, retry_after: float | None = None):
        super().__init__(*args)
        self.retry_after = retry_after


class Unauthorized(ProviderError):
    """Bad or expired credentials: retrying the same request cannot succeed."""

    retryable = False


class TokenExpired(Unauthorized):
    """The access token expired: refresh it once and retry."""


class NotFound(ProviderError):
    """Unknown symbol or no data for the request: not retried, not a reason to fall back."""

    retryable = False


class BadRequest(ProviderError):
    """A 4xx the provider will answer the same way again."""

    retryable = False


class SchemaDrift(ProviderError):
    """The payload does not have the documented shape (missing keys, malformed JSON)."""

    retryable = False


class ProviderDown(SourceUnavailable):
    """Retries exhausted or circuit open: the fallback chain moves to the next source."""
