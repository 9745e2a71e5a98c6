"""`<market>/order_books`: compact a session's captured 10-level snapshots, validate, derive
spread, mid, depth and imbalance, store, quarantine.

Snapshots come from the capture spool (resources/book_spool.py, filled by the capture schedule
in book_capture.py) when the session was captured, otherwise from a source that has history
(the synthetic one). A live-only provider cannot backfill a session it was not watching, and the
run says so instead of storing an empty book.
"""

import os

import dagster as dg
import numpy as np
import polars as pl

from checks.errors import ConfigurationError
from checks.order_book_rules import (
    coverage_by_session,
    coverage_result,
    order_book_check_specs,
    order_book_rules_result,
    validate_order_books,
)
from checks.rulebook import Validated
from checks.schemas import ORDER_BOOK_LEVELS, ORDER_BOOKS
from resources.book_spool import BookSpool
from resources.books import order_book_history
from resources.sources.base import SourceUnavailable

from .ingest import Ingest, Run, Shown, ingested_asset
from .prices import load_universe

DATASET = "order_books"
INTERVAL_VARIABLE = "MARKETPIPE_ORDER_BOOK_INTERVAL_MINUTES"
DEFAULT_INTERVAL = 5
# Capture ticks are cron minutes; intervals dividing 30 land on both markets' opens (:00, :30).
ALLOWED_INTERVALS = (1, 2, 3, 5, 6, 10, 15, 30)


def capture_interval() -> int:
    raw = os.environ.get(INTERVAL_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    if not raw.isdigit() or int(raw) not in ALLOWED_INTERVALS:
        raise ConfigurationError(
            f"{INTERVAL_VARIABLE}={raw!r}: use one of {list(ALLOWED_INTERVALS)} minutes "
            "(a divisor of 30, so captures fall on the sessions' opening minute)"
        )
    return int(raw)


def with_derived(books: pl.DataFrame) -> pl.DataFrame:
    """Add mid, spread, spread_pct (of mid), cumulative depth per side and its imbalance.

    `books` are validated snapshots: ten rows each, sorted by (symbol, snapshot_ts, level), so
    each snapshot is one row of a (snapshots x 10) matrix.
    """
    n = ORDER_BOOK_LEVELS
    if len(books) % n:
        raise ValueError(f"order books must have {n} rows per snapshot; got {len(books)} rows")
    bid = books["bid_price"].to_numpy().reshape(-1, n)[:, 0]
    ask = books["ask_price"].to_numpy().reshape(-1, n)[:, 0]
    cum_bid = books["bid_size"].to_numpy().reshape(-1, n).cumsum(axis=1).ravel()
    cum_ask = books["ask_size"].to_numpy().reshape(-1, n).cumsum(axis=1).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        mid = (bid + ask) / 2
        spread = ask - bid
        depth = cum_bid + cum_ask
        imbalance = np.where(depth > 0, (cum_bid - cum_ask) / depth, np.nan)
    derived = books.with_columns(
        pl.Series("mid", np.repeat(mid, n)),
        pl.Series("spread", np.repeat(spread, n)),
        pl.Series("spread_pct", np.repeat(spread / mid * 100, n)),
        pl.Series("cum_bid_size", cum_bid, dtype=pl.Int64),
        pl.Series("cum_ask_size", cum_ask, dtype=pl.Int64),
        pl.Series("imbalance", imbalance),
    )
    return derived.with_columns(pl.col(pl.Float64).fill_nan(None)).select(list(ORDER_BOOKS))


def _fetch_books(run: Run) -> pl.DataFrame:
    """Captured snapshots of the sessions the spool has; the others from the source's history."""
    market, sessions = run.market, run.sessions
    universe = load_universe(run.lake, market)
    interval = capture_interval()
    spool = BookSpool()
    captured_days = [d for d in sessions if spool.slots(market, d)]
    missing_days = [d for d in sessions if d not in captured_days]
    run.facts.update(universe=universe, interval=interval, captured_days=captured_days)
    frames = [spool.read(market, captured_days)]
    if missing_days:
        try:
            symbols = universe["symbol"].to_list()
            source = run.market_data.source(market)
            frames.append(order_book_history(source, market, missing_days, symbols, interval))
        except SourceUnavailable as exc:
            days = ", ".join(d.isoformat() for d in missing_days[:5])
            more = f" and {len(missing_days) - 5} more" if len(missing_days) > 5 else ""
            raise dg.Failure(
                f"{market}/order_books: no snapshots were captured for {days}{more} in "
                f"{spool.root}, and {exc}"
            ) from exc
    return pl.concat(frames)


def _validate_books(run: Run, sent: pl.DataFrame) -> Validated:
    return validate_order_books(sent, run.market, run.sessions)


def _check_books(run: Run, stored: pl.DataFrame, validated: Validated) -> list:
    facts = run.facts
    by_session = coverage_by_session(
        stored, facts["universe"], run.market, run.sessions, facts["interval"]
    )
    facts["by_session"] = by_session
    return [
        order_book_rules_result(stored, validated, run.market, run.sessions),
        coverage_result(by_session),
    ]


def _shown_books(run: Run, stored: pl.DataFrame, counts) -> Shown:
    captured = pl.col("trade_date").is_in(run.facts["captured_days"])
    return Shown(
        counts={
            "snapshots": stored.filter(pl.col("level") == 1),
            "quarantined_rows": counts["quarantined"],
        },
        percents=run.facts["by_session"].select(
            "trade_date",
            "coverage_pct",
            snapshots_from=pl.when(captured)
            .then(pl.lit("capture"))
            .otherwise(pl.lit("source history")),
        ),
        extra={"interval_minutes": run.facts["interval"]},
    )


ORDER_BOOKS_INGEST = Ingest(
    dataset=DATASET,
    description="10-level snapshots per session (captured every "
    "MARKETPIPE_ORDER_BOOK_INTERVAL_MINUTES) with spread, mid, cumulative depth and imbalance; a "
    "snapshot breaking a rule is quarantined whole with its rules.",
    check_specs=order_book_check_specs,
    fetch=_fetch_books,
    validate=_validate_books,
    derive=with_derived,
    checks=_check_books,
    shown=_shown_books,
)


def order_books_asset(market: str) -> dg.AssetsDefinition:
    return ingested_asset(market, ORDER_BOOKS_INGEST)
