"""The source interface every provider implements, and the fallback chain over several."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import polars as pl

T = TypeVar("T")


class SourceUnavailable(RuntimeError):
    """The source cannot serve now (down, circuit open, live-only); a chain moves on."""


class SourceError(RuntimeError):
    """The source answered with something unusable; the message names what and where."""


class Source(Protocol):
    name: str

    def universe(self, market: str) -> pl.DataFrame:
        """Every symbol the source lists for the market, in the universe schema."""
        ...

    def daily_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        """Bars of `symbols` on `sessions`, in the daily_prices schema with `source` set.

        Rows are returned as the provider sent them (bad ones included): validation decides.
        """
        ...


def intraday_bars(
    source, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
) -> pl.DataFrame:
    """The source's 15-minute bars (the intraday_bars schema, `trade_date` the session), for the
    sources that have them (an optional method); any other source is unavailable, so a chain
    moves on to the next."""
    method = getattr(source, "intraday_bars", None)
    if method is None:
        raise SourceUnavailable(f"the {source.name} source has no intraday bars")
    return method(market, sessions, symbols)


class FallbackSource:
    """Tries each source in order; moves to the next when one is unavailable.

    `last_failures` records, for the latest call, every source that was tried and could not serve
    (`source`, `error` type, `reason`), in chain order: empty when the first source served. The
    reasons are the sources' own messages, which never carry secrets (providers redact theirs).
    """

    def __init__(self, sources: Sequence[Source]):
        self.sources = list(sources)
        self.name = ",".join(s.name for s in self.sources)
        self.last_failures: list[dict[str, str]] = []

    def first_available(self, call: Callable[[Source], T]) -> T:
        """call(source) on each source in order until one serves; SourceUnavailable when none
        can, naming each one's reason. Datasets beyond daily bars use this for their own
        dispatch (order books, option chains)."""
        failures: list[dict[str, str]] = []
        self.last_failures = failures
        for source in self.sources:
            try:
                return call(source)
            except SourceUnavailable as exc:
                reason = str(exc)
                reason = reason if len(reason) <= 1000 else reason[:1000] + "..."
                failures.append(
                    {"source": source.name, "error": type(exc).__name__, "reason": reason}
                )
        detail = "; ".join(f"{f['source']}: {f['reason']}" for f in failures)
        raise SourceUnavailable("every source in the chain failed: " + detail)

    def universe(self, market: str) -> pl.DataFrame:
        return self.first_available(lambda s: s.universe(market))

    def daily_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        return self.first_available(lambda s: s.daily_bars(market, sessions, symbols))

    def intraday_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        return self.first_available(lambda s: intraday_bars(s, market, sessions, symbols))
