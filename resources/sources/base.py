"""The source interface every provider implements, and the fallback chain over several."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol, TypeVar

import polars as pl

T = TypeVar("T")


class Dataset(StrEnum):
    """The datasets a source can serve. Each source declares its own in `datasets`, and a caller
    asks `serves(source, dataset)` (or `require`) instead of probing for a method."""

    UNIVERSE = "universe"  # universe(market)
    DAILY_BARS = "daily_bars"  # daily_bars(market, sessions, symbols)
    INTRADAY_BARS = "intraday_bars"  # intraday_bars(market, sessions, symbols)
    ORDER_BOOKS = "order_books"  # async order_book(symbol): the live book, `async with source:`
    ORDER_BOOK_HISTORY = "order_book_history"  # order_book_history(market, sessions, symbols, ..)
    OPTION_CHAINS = "option_chains"  # async option_chain(symbol, quote_date): the current chain


class SourceUnavailable(RuntimeError):
    """The source cannot serve now (down, circuit open, live-only); a chain moves on."""


class SourceError(RuntimeError):
    """The source answered with something unusable; the message names what and where."""


class Source(Protocol):
    name: str
    datasets: frozenset[Dataset]  # what it serves

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


# The method each dataset is served by, for a source that declares no `datasets` (a test double,
# a class from outside this package): what it has is what it serves.
METHODS = {
    Dataset.UNIVERSE: "universe",
    Dataset.DAILY_BARS: "daily_bars",
    Dataset.INTRADAY_BARS: "intraday_bars",
    Dataset.ORDER_BOOKS: "order_book",
    Dataset.ORDER_BOOK_HISTORY: "order_book_history",
    Dataset.OPTION_CHAINS: "option_chain",
}


def datasets_of(source) -> frozenset[Dataset]:
    """The datasets `source` declares; for one that declares none, those it has a method for."""
    declared = getattr(source, "datasets", None)
    if declared is not None:
        return frozenset(declared)
    return frozenset(d for d, method in METHODS.items() if callable(getattr(source, method, None)))


def serves(source, dataset: str, market: str | None = None) -> bool:
    """Whether `source` serves `dataset` (for `market`: a provider names its markets)."""
    markets = getattr(source, "markets", None)  # None: any market (synthetic, files)
    in_market = market is None or markets is None or market in markets
    return dataset in datasets_of(source) and in_market


def require(source, dataset: str, market: str, detail: str = "") -> None:
    """SourceUnavailable naming source, dataset and market unless `source` serves them, so a
    fallback chain moves on to its next source."""
    if serves(source, dataset, market):
        return
    markets = getattr(source, "markets", None)
    where = f" (it serves market {', '.join(markets)})" if markets and market not in markets else ""
    raise SourceUnavailable(
        f"the {source.name} source has no {dataset.replace('_', ' ')} for market {market!r}"
        f"{where}{detail}"
    )


def intraday_bars(
    source, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
) -> pl.DataFrame:
    """The source's 15-minute bars (the intraday_bars schema, `trade_date` the session), for the
    sources that declare them; any other source is unavailable, so a chain moves on."""
    if isinstance(source, FallbackSource):
        return source.intraday_bars(market, sessions, symbols)
    require(source, Dataset.INTRADAY_BARS, market)
    return source.intraday_bars(market, sessions, symbols)


class FallbackSource:
    """Tries each source in order; moves to the next when one is unavailable.

    `last_failures` records, for the latest call, every source that was tried and could not serve
    (`source`, `error` type, `reason`), in chain order: empty when the first source served. The
    reasons are the sources' own messages, which never carry secrets (providers redact theirs).
    """

    def __init__(self, sources: Sequence[Source]):
        self.sources = list(sources)
        self.name = ",".join(s.name for s in self.sources)
        # What any source of the chain serves: each call still moves on past those that do not.
        self.datasets = frozenset().union(*(datasets_of(s) for s in self.sources))
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
