"""The rules a trade obeys at ingest, as data (rulebook.py), and the split of a spooled
batch into clean trades and quarantined rows.

A replayed trade is not a broken one: the spool's unique identity already drops it, so there is
no duplicate rule here (the lake's uniqueness is the aggregates' check). A frame that could not be
read at all carries its `problem` as its only violation.
"""

from __future__ import annotations

import datetime as dt
import os

import polars as pl

from .errors import ConfigurationError
from .markets import MARKETS, is_session, session_bounds
from .rulebook import (
    AtLeast,
    NotNull,
    Rule,
    Validated,
    WithinColumns,
    finite_rule,
    named_rule,
    validate,
)
from .schemas import TRADES, make_schema, quarantine_schema

SESSION = "session"  # the session date a row belongs to: its partition
LOW, HIGH = "_session_low", "_session_high"
TOLERANCE_VARIABLE = "MARKETPIPE_TRADE_SESSION_TOLERANCE_MINUTES"
# Clocks of exchanges and vendors disagree by seconds, and closing-auction prints arrive just
# after the close; pre- and post-market trades (US 04:00-09:30, 16:00-20:00) stay outside
# unless the tolerance is raised to cover them.
DEFAULT_TOLERANCE_MINUTES = 5.0

TRADE_RULES: tuple[Rule, ...] = (
    Rule(
        "required_fields",
        "symbol, ts, price and size are present and readable",
        tuple(NotNull(c) for c in ("symbol", "ts", "price", "size")),
    ),
    named_rule("symbol"),
    finite_rule("finite_values", ("price", "size")),
    Rule("positive_price", "price > 0", (AtLeast("price", 0, strict=True),)),
    Rule("positive_size", "size > 0", (AtLeast("size", 0, strict=True),)),
    Rule(
        "within_session",
        "session open - tolerance <= ts < session close + tolerance, on a session day",
        (WithinColumns("ts", LOW, HIGH),),
    ),
)
CLEAN = make_schema({**TRADES, SESSION: pl.Date})
QUARANTINE = make_schema({**quarantine_schema(TRADES), "raw": pl.String, SESSION: pl.Date})
_TS = pl.Datetime("ms", "UTC")


def session_tolerance() -> dt.timedelta:
    raw = os.environ.get(TOLERANCE_VARIABLE, "").strip()
    try:
        minutes = float(raw) if raw else DEFAULT_TOLERANCE_MINUTES
    except ValueError:
        minutes = -1.0
    if not minutes >= 0:
        raise ConfigurationError(f"{TOLERANCE_VARIABLE}={raw!r}: use minutes >= 0, e.g. 5")
    return dt.timedelta(minutes=minutes)


def _bounds(market: str, days: list[dt.date], tolerance: dt.timedelta) -> pl.DataFrame:
    sessions = [d for d in days if is_session(market, d)]
    bounds = [session_bounds(market, d) for d in sessions]
    return pl.DataFrame(
        {
            SESSION: sessions,
            LOW: [o - tolerance for o, _ in bounds],
            HIGH: [c + tolerance for _, c in bounds],
        },
        schema={SESSION: pl.Date, LOW: _TS, HIGH: _TS},
    )


def check_trades(
    batch: pl.DataFrame, market: str, *, tolerance: dt.timedelta | None = None
) -> Validated:
    """Split spooled rows (trade_spool.SPOOL columns) into clean trades (CLEAN) and quarantined
    rows (QUARANTINE: with `violations` and the frame text in `raw` where a field was
    unreadable). The session of a row is the market-local date of its ts (of its arrival when
    it has none)."""
    tolerance = session_tolerance() if tolerance is None else tolerance
    zone = MARKETS[market].timezone
    dated = batch.with_columns(
        pl.coalesce("ts", "received").dt.convert_time_zone(zone).dt.date().alias(SESSION)
    )
    days = dated[SESSION].drop_nulls().unique().to_list()
    joined = dated.join(_bounds(market, days, tolerance), on=SESSION, how="left")
    readable = joined.filter(pl.col("problem").is_null())
    checked = validate(readable.select(*TRADES, "raw", SESSION, LOW, HIGH), TRADE_RULES)
    unreadable = joined.filter(pl.col("problem").is_not_null()).with_columns(
        violations=pl.concat_list(pl.col("problem"))
    )
    quarantined = pl.concat(
        [checked.quarantined.select(QUARANTINE.names()), unreadable.select(QUARANTINE.names())]
    )
    counts = {**checked.violation_counts}
    for problem, n in unreadable["problem"].value_counts().iter_rows():
        counts[problem] = counts.get(problem, 0) + n
    return Validated(
        clean=checked.clean.select(CLEAN.names()),
        quarantined=quarantined,
        violation_counts=counts,
    )
