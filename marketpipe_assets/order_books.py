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
from checks.markets import partition_dates, partitions_def, with_filing
from checks.order_book_rules import (
    coverage_by_session,
    coverage_result,
    order_book_check_specs,
    order_book_rules_result,
    validate_order_books,
)
from checks.schemas import FILED_UNDER, ORDER_BOOK_LEVELS, ORDER_BOOKS
from resources.book_spool import BookSpool
from resources.books import order_book_history
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.sources.base import SourceUnavailable

from .metadata import accounted, session_metadata
from .prices import load_universe, provider_pool
from .publish import publish_if_checks_pass
from .retries import provider_retries

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


def order_books_asset(market: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([market, DATASET])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey([market, "universe"])],
        partitions_def=partitions_def(market),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=order_book_check_specs(key),
        group_name=market,
        kinds={"polars", "parquet"},
        pool=provider_pool(market),
    )
    @provider_retries
    def order_books(
        context: dg.AssetExecutionContext, lake: LakeResource, market_data: MarketDataResource
    ):
        """10-level snapshots per session (captured every MARKETPIPE_ORDER_BOOK_INTERVAL_MINUTES)
        with spread, mid, cumulative depth and imbalance; a snapshot breaking a rule is
        quarantined whole with its rules."""
        sessions = partition_dates(context.partition_keys)
        universe = load_universe(lake, market)
        interval = capture_interval()
        spool = BookSpool()
        captured_days = [d for d in sessions if spool.slots(market, d)]
        missing_days = [d for d in sessions if d not in captured_days]
        frames = [spool.read(market, captured_days)]
        if missing_days:
            try:
                symbols = universe["symbol"].to_list()
                source = market_data.source(market)
                frames.append(order_book_history(source, market, missing_days, symbols, interval))
            except SourceUnavailable as exc:
                days = ", ".join(d.isoformat() for d in missing_days[:5])
                more = f" and {len(missing_days) - 5} more" if len(missing_days) > 5 else ""
                raise dg.Failure(
                    f"{market}/order_books: no snapshots were captured for {days}{more} in "
                    f"{spool.root}, and {exc}"
                ) from exc
        sent = pl.concat(frames)
        validated = validate_order_books(sent, market, sessions)
        stored = with_derived(validated.clean)
        # Rows of other sessions or none are filed under one of the run's (nothing dropped).
        quarantined = with_filing(validated.quarantined, sessions)
        counts = accounted(f"{market}/{DATASET}", len(sent), stored, quarantined)
        # Replaces exactly this run's partitions, stored and quarantine together, once the
        # blocking checks pass.
        batch = lake.stage(
            context.run_id,
            DATASET,
            market,
            stored,
            quarantined,
            sessions,
            quarantine_date_column=FILED_UNDER,
        )

        by_session = coverage_by_session(stored, universe, market, sessions, interval)
        check_results = [
            order_book_rules_result(stored, validated, market, sessions),
            coverage_result(by_session),
        ]
        yield from publish_if_checks_pass(context, lake, batch, check_results)
        yield dg.MaterializeResult(
            metadata={
                **session_metadata(
                    context,
                    sessions,
                    counts={
                        **counts,
                        "snapshots": stored.filter(pl.col("level") == 1),
                        "quarantined_rows": counts["quarantined"],
                    },
                    percents=by_session.select(
                        "trade_date",
                        "coverage_pct",
                        snapshots_from=pl.when(pl.col("trade_date").is_in(captured_days))
                        .then(pl.lit("capture"))
                        .otherwise(pl.lit("source history")),
                    ),
                    uri=lake.uri(lake.market_dir(DATASET, market)),
                    shown=stored,
                ),
                "interval_minutes": interval,
            },
            check_results=check_results,
        )

    return order_books
