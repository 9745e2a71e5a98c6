"""The trade reports of `marketpipe query` as functions returning JSON-ready dicts.

Every answer reads the lake and the collector's spool together: stored hourly or per-minute
aggregates for hours that are complete (trade_aggregates.complete_hours: aggregated, no batch
flushed since holds a trade of the hour, no unflushed trade of the hour), raw trades of the
other hours plus the spool's unflushed trades, de-duplicated and checked exactly as the
aggregation does. No answer counts a trade stamped after its `now`. Times are UTC; hours and
minutes are given as ISO datetimes of their start.
"""

import datetime as dt

import polars as pl

from checks.schemas import TRADE_AGGREGATES, TRADES, make_schema
from checks.trade_checks import drop_exact_duplicates, validate_trades
from resources.lake import LakeResource

from .trade_files import batch_files, complete_hours, read_hours, read_trades
from .trade_hours import (
    DATASET,
    HOUR,
    MINUTES_DATASET,
    TRADE_MINUTES,
    floor_hour,
    session_hours,
    trade_days,
)

MINUTE = dt.timedelta(minutes=1)
# The reports' windows: A.1/A.2 the last 6 closed hours, A.3 the last 12, B.2 the last hour.
PER_STOCK_HOURS = 6
STATS_HOURS = 12
TOP_MINUTES = 60
# B.3 looks back this far for a symbol's latest trade (a long weekend and then some).
PRICE_LOOKBACK = dt.timedelta(days=7)
BUCKETS = make_schema(
    {
        "start": pl.Datetime("ms", "UTC"),
        "symbol": pl.String,
        "trades": pl.Int64,
        "volume": pl.Float64,
        "notional": pl.Float64,  # sum of price x size: VWAP = notional / volume
    }
)


def unflushed_trades(market: str) -> pl.DataFrame:
    """The spool's trades not in the lake yet; empty without a collector module or spool."""
    try:
        from resources.trade_spool import read_unflushed
    except ImportError:
        return pl.DataFrame(schema=TRADES)
    return read_unflushed(market).select(list(TRADES)).cast(TRADES)


def buckets(
    lake: LakeResource,
    market: str,
    start: dt.datetime,
    end: dt.datetime,
    grain: dt.timedelta,
    *,
    spool: pl.DataFrame,
    symbol: str | None = None,
) -> pl.DataFrame:
    """BUCKETS per (bucket start, symbol) of the trades with start <= ts < end; `grain` is an
    hour or a minute and `start` is aligned to it. `end` may cut a bucket (a query's "now"):
    that bucket then holds only the trades before `end`."""
    in_window = (pl.col("ts") >= start) & (pl.col("ts") < end)
    wanted = pl.lit(True) if symbol is None else pl.col("symbol") == symbol
    hours = []
    hour = floor_hour(start)
    while hour < end:
        hours.append(hour)
        hour += HOUR
    spool = spool.filter(in_window)
    fresh = set(spool["ts"].dt.truncate("1h").unique())
    # Stored aggregates hold whole hours: an hour that `end` cuts is recomputed from its trades.
    whole = [h for h in hours if h + HOUR <= end]
    complete = sorted(complete_hours(lake, market, whole) - fresh)
    stored = _stored(lake, market, complete, grain).filter(
        (pl.col("start") >= start) & (pl.col("start") < end), wanted
    )
    recompute = [h for h in hours if h not in set(complete)]
    if not recompute:
        return stored
    files = batch_files(lake, market, trade_days(market, recompute[0], recompute[-1] + HOUR))
    # One read per run of consecutive hours: the complete hours between them are not decoded.
    runs: list[list[dt.datetime]] = []
    for hour in recompute:
        if runs and runs[-1][-1] + HOUR == hour:
            runs[-1].append(hour)
        else:
            runs.append([hour])
    lake_trades = []
    for run in runs:
        lo, hi = max(start, run[0]), min(end, run[-1] + HOUR)
        days = set(trade_days(market, lo, hi))  # only the folders that can hold these hours
        lake_trades.append(read_trades(lake, [f.path for f in files if f.day in days], lo, hi))
    raw = pl.concat([*lake_trades, spool.filter(pl.col("ts").dt.truncate("1h").is_in(recompute))])
    raw = raw.filter(in_window, wanted)
    valid = validate_trades(drop_exact_duplicates(raw), market).clean
    every = "1h" if grain == HOUR else "1m"
    computed = valid.group_by(start=pl.col("ts").dt.truncate(every), symbol="symbol").agg(
        trades=pl.len().cast(pl.Int64),
        volume=pl.col("size").sum(),
        notional=(pl.col("price") * pl.col("size")).sum(),
    )
    return pl.concat([stored, computed.select(list(BUCKETS))])


def _stored(lake: LakeResource, market: str, hours: list[dt.datetime], grain: dt.timedelta):
    if grain == HOUR:
        frame = read_hours(lake, DATASET, market, hours, TRADE_AGGREGATES).rename(
            {"hour_start": "start"}
        )
    else:
        frame = read_hours(lake, MINUTES_DATASET, market, hours, TRADE_MINUTES).rename(
            {"minute_start": "start"}
        )
    return frame.select(
        "start", "symbol", "trades", "volume", notional=pl.col("vwap") * pl.col("volume")
    )


def _iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).isoformat()


def _through(now: dt.datetime) -> dt.datetime:
    """The exclusive end bound that keeps every trade stamped at or before `now` and none after
    (trade times have millisecond precision)."""
    now = now.astimezone(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000) + dt.timedelta(milliseconds=1)


def _closed_hours(now: dt.datetime, count: int) -> list[dt.datetime]:
    """The `count` hours before the current one, newest first."""
    current = floor_hour(now)
    return [current - HOUR * n for n in range(1, count + 1)]


def _per_hour(lake, market, now, count, shape) -> dict:
    hours = _closed_hours(now, count)
    table = buckets(lake, market, hours[-1], hours[0] + HOUR, HOUR, spool=unflushed_trades(market))
    trading = set(session_hours(market, hours[-1], hours[0] + HOUR))
    transactions, missing = [], []
    for hour in hours:
        rows = table.filter(pl.col("start") == hour).sort("symbol")
        if rows.is_empty():
            # An hour of a session without data is listed, not shown as zeros; an hour
            # outside every session (overnight, weekend, holiday) is expected to be empty.
            if hour in trading:
                missing.append(_iso(hour))
            continue
        entry = {"hour": _iso(hour), "datetime": f"{hour:%Y-%m-%d %H:%M:%S}"}
        transactions.append({**entry, "data": shape(rows)})
    return {"transactions": transactions, "missing_hours": missing}


def _by_symbol(rows: pl.DataFrame, column: str) -> dict:
    return dict(rows.select("symbol", column).iter_rows())


def transactions_hourly(lake: LakeResource, market: str, now: dt.datetime) -> dict:
    """A.1: trades per stock for each of the last 6 hours, excluding the current hour."""
    return _per_hour(lake, market, now, PER_STOCK_HOURS, lambda r: _by_symbol(r, "trades"))


def volumes_hourly(lake: LakeResource, market: str, now: dt.datetime) -> dict:
    """A.2: volume per stock for each of the last 6 hours, excluding the current hour."""
    return _per_hour(lake, market, now, PER_STOCK_HOURS, lambda r: _by_symbol(r, "volume"))


def hourly_stats(lake: LakeResource, market: str, now: dt.datetime) -> dict:
    """A.3: trades and volume of each of the last 12 hours (current excluded), missing listed."""

    def totals(rows: pl.DataFrame) -> dict:
        return {
            "total_volume": float(rows["volume"].sum()),
            "total_count": int(rows["trades"].sum()),
        }

    return _per_hour(lake, market, now, STATS_HOURS, totals)


def transactions_minutes(
    lake: LakeResource, market: str, symbol: str, n: int, now: dt.datetime
) -> dict:
    """B.1: trades of `symbol` in the last `n` minutes, excluding the current minute."""
    if n < 1:
        raise ValueError(f"N={n}: the number of minutes must be at least 1")
    end = now.astimezone(dt.UTC).replace(second=0, microsecond=0)
    start = end - MINUTE * n
    table = buckets(lake, market, start, end, MINUTE, spool=unflushed_trades(market), symbol=symbol)
    by_minute = dict(table.select("start", "trades").iter_rows())
    minutes = [start + MINUTE * i for i in range(n)][::-1]
    return {
        "symbol": symbol,
        "n": n,
        "start": _iso(start),
        "end": _iso(end),
        "count": int(table["trades"].sum()),
        "volume": float(table["volume"].sum()),
        "minutes": [{"minute": _iso(m), "count": int(by_minute.get(m, 0))} for m in minutes],
    }


def top_volume(lake: LakeResource, market: str, n: int, now: dt.datetime) -> dict:
    """B.2: the `n` stocks with the highest volume in the last hour: the 59 minutes before the
    current one and the current minute up to `now` (the freshest trades come from the spool)."""
    if n < 1:
        raise ValueError(f"N={n}: the number of stocks must be at least 1")
    current = now.astimezone(dt.UTC).replace(second=0, microsecond=0)
    start = current - MINUTE * (TOP_MINUTES - 1)
    table = buckets(lake, market, start, _through(now), MINUTE, spool=unflushed_trades(market))
    top = (
        table.group_by("symbol")
        .agg(total_volume=pl.col("volume").sum(), total_count=pl.col("trades").sum())
        .sort(["total_volume", "symbol"], descending=[True, False])
        .head(n)
    )
    return {"start": _iso(start), "end": _iso(now), "top": top.to_dicts()}


def latest_price(lake: LakeResource, market: str, symbol: str, now: dt.datetime) -> dict:
    """B.3: the current price of `symbol`: the VWAP of its latest minute with trades (up to
    `now`, the current minute's trades so far included), looking back at most PRICE_LOOKBACK."""
    spool = unflushed_trades(market)
    end = _through(now)
    # Nearest first: most calls find a trade in the current hour and read nothing older.
    for back in (end - floor_hour(now), dt.timedelta(days=1), PRICE_LOOKBACK):
        start = (end - back).replace(second=0, microsecond=0)
        table = buckets(lake, market, start, end, MINUTE, spool=spool, symbol=symbol)
        if not table.is_empty():
            last = table.sort("start").tail(1).row(0, named=True)
            return {
                "symbol": symbol,
                "latest_price": last["notional"] / last["volume"],
                "minute": _iso(last["start"]),
                "trades": last["trades"],
                "volume": last["volume"],
            }
    return {"symbol": symbol, "latest_price": None, "minute": None, "trades": 0, "volume": 0.0}
