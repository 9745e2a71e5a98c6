"""Live order-book capture: a schedule every MARKETPIPE_ORDER_BOOK_INTERVAL_MINUTES during
sessions runs a small job that stores the books of the market's active symbols into the spool.

Books are live-only at real providers, so each capture slot is its own run with its own run
key: a daemon restart neither repeats a slot (same run key) nor loses the slots already spooled
(durable files). A slot already in the spool is never captured again, so a retried or repeated
run cannot store a second copy of it.
"""

import datetime as dt
from functools import cache

import dagster as dg
import polars as pl

from checks.markets import MARKETS, capture_slots, is_session
from resources.book_spool import BookSpool
from resources.books import order_books_at
from resources.lake import LakeResource
from resources.market_data import MarketDataResource

from .order_books import capture_interval
from .prices import active_symbols, load_universe, provider_pool


class CaptureConfig(dg.Config):
    slot: str  # ISO time of the capture slot, e.g. 2026-11-20T00:00:00+00:00


def session_of(market: str, slot: dt.datetime) -> dt.date | None:
    """The session `slot` is a capture slot of, if any."""
    from zoneinfo import ZoneInfo

    day = slot.astimezone(ZoneInfo(MARKETS[market].timezone)).date()
    if not is_session(market, day) or slot not in capture_slots(market, day, capture_interval()):
        return None
    return day


def capture(
    market: str,
    slot: dt.datetime,
    *,
    lake: LakeResource,
    market_data: MarketDataResource,
    spool: BookSpool,
) -> dict:
    """Store the books of `slot` in the spool once; returns what was done."""
    day = session_of(market, slot)
    if day is None:
        raise dg.Failure(
            f"{slot.isoformat()} is not a {market} order-book capture slot: captures run every "
            f"{capture_interval()} minutes from the open of an {MARKETS[market].calendar} session"
        )
    if spool.has(market, day, slot):
        return {"status": "already captured", "path": str(spool.slot_file(market, day, slot))}
    universe = load_universe(lake, market)
    active = active_symbols(universe, day)["symbol"].to_list()
    # A slot file, even an empty one, marks the slot captured for good: with nothing to store
    # the run fails instead, so the slot stays open for a retry once the data is fixed.
    if not active:
        raise dg.Failure(
            f"{market} books at {slot.isoformat()}: no symbol of {market}/universe "
            f"({len(universe)} rows) is active on {day}, so nothing was captured or spooled; "
            "check its listing_date and delisting_date columns (a delisting before the "
            f"listing means never active) and rematerialize {market}/universe"
        )
    source = market_data.source(market)
    books = order_books_at(source, market, day, slot, active, capture_interval())
    if books.is_empty():
        raise dg.Failure(
            f"{market} books at {slot.isoformat()}: {source.name} returned no book for any of "
            f"the {len(active)} active symbols, so nothing was spooled and the slot can be "
            "captured again by a retry"
        )
    path = spool.write(market, day, slot, books)
    captured = books.filter(pl.col("level") == 1)["symbol"].n_unique()
    return {"status": "captured", "symbols": captured, "active": len(active), "path": str(path)}


@cache
def capture_job(market: str) -> dg.JobDefinition:
    @dg.op(name=f"capture_{market}_order_books", pool=provider_pool(market))
    def capture_books(
        context: dg.OpExecutionContext,
        config: CaptureConfig,
        lake: LakeResource,
        market_data: MarketDataResource,
    ) -> None:
        slot = dt.datetime.fromisoformat(config.slot).astimezone(dt.UTC)
        done = capture(market, slot, lake=lake, market_data=market_data, spool=BookSpool())
        context.log.info(f"{market} books at {slot.isoformat()}: {done}")

    @dg.job(
        name=f"{market}_order_book_capture",
        description=f"Capture the {market.upper()} order books of one slot into the spool.",
    )
    def capture_run():
        capture_books()

    return capture_run


def capture_schedule(market: str) -> dg.ScheduleDefinition:
    spec = MARKETS[market]
    interval = capture_interval()
    job = capture_job(market)
    op_name = f"capture_{market}_order_books"

    @dg.schedule(
        name=f"{market}_order_book_capture",
        job=job,
        cron_schedule=f"*/{interval} * * * 1-5",
        execution_timezone=spec.timezone,
        # Off until turned on: every capture spends provider requests for every active symbol.
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Every {interval} min of {spec.calendar} sessions: spool the books.",
    )
    def book_capture(context: dg.ScheduleEvaluationContext):
        slot = context.scheduled_execution_time.astimezone(dt.UTC)
        if session_of(market, slot) is None:
            return dg.SkipReason(f"{slot.isoformat()} is outside {spec.calendar} session hours")
        return dg.RunRequest(
            run_key=f"{market}-books-{slot.isoformat()}",
            run_config={"ops": {op_name: {"config": {"slot": slot.isoformat()}}}},
            tags={"marketpipe/capture_slot": slot.isoformat()},
        )

    return book_capture
