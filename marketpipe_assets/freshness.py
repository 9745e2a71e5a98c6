"""Freshness: Dagster freshness policies on the daily assets and per-symbol freshness checks.

Two views of the same promise. The policies (`with_freshness`) are Dagster's asset-level view,
shown in the UI's asset health: "materialized after the previous weekday's close, by 09:00".
They are not session- or symbol-aware, so after an exchange holiday the policy reads FAIL until
the next session's run. The checks below are the authority: they read the lake, know the
exchange calendar and name every stale symbol with its last update.
"""

import datetime as dt
import os
import warnings
from collections.abc import Sequence
from functools import cache
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl

from checks.listing import active_on
from checks.markets import (
    MARKETS,
    is_session,
    partitions_def,
    previous_session,
    session_bounds,
    sessions_between,
)
from checks.metadata import markdown_table
from checks.schemas import DAILY_PRICES, INTRADAY_BARS
from resources.lake import LakeResource

from .datasets import names
from .prices import active_symbols, load_universe

SYMBOL_FRESHNESS = "symbol_freshness"
PARTITION_TAG = "dagster/partition"
# Evaluation time of the checks as an ISO datetime (naive = UTC); unset, the real clock.
NOW_VARIABLE = "MARKETPIPE_NOW"
MAX_AGE_VARIABLE = "MARKETPIPE_INTRADAY_MAX_AGE_HOURS"
DEFAULT_INTRADAY_MAX_AGE = dt.timedelta(hours=4)  # the seed: "updated at least every 4 hours"

# "Yesterday's session by the morning": a session's daily data is due at 09:00 local the next
# day, so the deadlines fall Tue-Sat, the morning after each weekday session.
DAILY_DEADLINE = dt.time(9, 0)
DAILY_DEADLINE_CRON = "0 9 * * 2-6"
# A materialization counts from 16:00 the day before the deadline: after both exchanges close
# (KRX 15:30, NYSE 16:00), i.e. one that can hold that session's bars.
DAILY_LOWER_BOUND = dt.timedelta(hours=17)
# A symbol is stale after this many ingested sessions in a row without a stored bar: one
# missing bar is the completeness check's business (the synthetic source drops 1% by design).
STALE_AFTER_SESSIONS = 3
# How far back ingested sessions and a stale symbol's last stored bar are looked for.
LOOKBACK = dt.timedelta(days=40)
_LISTED = 50  # stale symbols named in the description and metadata


def daily_freshness_policy(market: str) -> dg.FreshnessPolicy:
    return dg.FreshnessPolicy.cron(
        deadline_cron=DAILY_DEADLINE_CRON,
        lower_bound_delta=DAILY_LOWER_BOUND,
        timezone=MARKETS[market].timezone,
    )


def with_freshness(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The assets with each market's daily freshness policy on `<market>/daily_prices` and
    `<market>/indicators`; every other asset unchanged."""

    due = names(due_after_session=True)

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        path = spec.key.path
        if len(path) == 2 and path[0] in MARKETS and path[1] in due:
            return dg.apply_freshness_policy(spec, daily_freshness_policy(path[0]))
        return spec

    return list(dg.map_asset_specs(apply, assets))


def evaluation_time() -> dt.datetime:
    """Now, or MARKETPIPE_NOW when set, so a check can be evaluated as of any moment."""
    raw = os.environ.get(NOW_VARIABLE, "").strip()
    if not raw:
        return dt.datetime.now(dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"{NOW_VARIABLE}={raw!r} is not an ISO datetime") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def intraday_max_age() -> dt.timedelta:
    raw = os.environ.get(MAX_AGE_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_INTRADAY_MAX_AGE
    try:
        return dt.timedelta(hours=float(raw))
    except ValueError as exc:
        raise ValueError(f"{MAX_AGE_VARIABLE}={raw!r} is not a number of hours") from exc


def due_session(market: str, now: dt.datetime) -> dt.date | None:
    """The latest session whose daily data is due by `now` (its next morning's deadline)."""
    local = now.astimezone(ZoneInfo(MARKETS[market].timezone))
    # previous_session is strict: before the deadline, yesterday's session is not yet due.
    cutoff = local.date() if local.time() >= DAILY_DEADLINE else local.date() - dt.timedelta(1)
    return previous_session(market, cutoff)


def session_at(market: str, now: dt.datetime) -> tuple[dt.date, dt.datetime] | None:
    """(session date, open) when `now` falls between a session's open and close, else None."""
    day = now.astimezone(ZoneInfo(MARKETS[market].timezone)).date()
    if not is_session(market, day):
        return None
    opens, closes = session_bounds(market, day)
    return (day, opens) if opens <= now <= closes else None


def _stale(active: pl.DataFrame, last: pl.DataFrame, fresh: pl.Expr) -> pl.DataFrame:
    """Active symbols whose last update (null = none found) fails `fresh`; a null verdict
    (no update to judge) is stale."""
    joined = active.join(last, on="symbol", how="left")
    return joined.filter(~fresh.fill_null(False)).sort("symbol")


def _result(
    stale: pl.DataFrame, active: int, what: str, metadata: dict, judged: str = ""
) -> dg.AssetCheckResult:
    named = ", ".join(
        f"{s} (last {'none' if t is None else t})" for s, t in stale.head(_LISTED).rows()
    )
    more = f" and {len(stale) - _LISTED} more" if len(stale) > _LISTED else ""
    return dg.AssetCheckResult(
        check_name=SYMBOL_FRESHNESS,
        passed=stale.is_empty(),
        description=(
            f"{len(stale)} of {active} active symbol(s) {what}: {named}{more}"
            if len(stale)
            else f"all {active} active symbols are fresh{judged}"
        ),
        metadata={
            **metadata,
            "active_symbols": active,
            "stale_symbols": len(stale),
            "stale": dg.MetadataValue.json(
                [{"symbol": s, "last_update": str(t) if t else None} for s, t in stale.rows()][
                    :_LISTED
                ]
            ),
            "stale_preview": dg.MetadataValue.md(markdown_table(stale, limit=_LISTED)),
        },
    )


def judged_session(market: str, first: dt.date, last: dt.date) -> dt.date:
    """The session a run over `first..last` is judged on: its last (freshness is about the
    latest data; every session's share of symbols is the completeness check's)."""
    sessions = sessions_between(market, first, last)
    if not sessions:
        raise ValueError(f"{market}: no session between {first} and {last}")
    return sessions[-1]


def daily_freshness_result(lake: LakeResource, market: str, day: dt.date) -> dg.AssetCheckResult:
    """Judges session `day`: fails when it has not been ingested, or naming each symbol active
    on it that has no stored bar in the last STALE_AFTER_SESSIONS ingested sessions up to `day`.

    Only ingested sessions count: a session never materialized says nothing about a symbol
    (Dagster's freshness policy reports the missing run), so a lone old partition judges only
    itself. A symbol listed within the window has not yet had that many chances to miss."""
    ingested = sorted(
        d for d in lake.existing_days("daily_prices", market) if day - LOOKBACK <= d <= day
    )
    facts = {"judged_session": day.isoformat()}
    if day not in ingested:
        return dg.AssetCheckResult(
            check_name=SYMBOL_FRESHNESS,
            passed=False,
            description=f"{market}/daily_prices has no stored bars for the {day} session: "
            f"it has not been ingested; materialize partition {day}",
            metadata=facts,
        )
    window = ingested[-STALE_AFTER_SESSIONS:]
    universe = load_universe(lake, market)
    # Active on the judged session and on every session of the window: three chances missed.
    chances = universe.filter(*(active_on(d) for d in (day, *window))).select("symbol")
    recent = lake.read_partitions(
        "daily_prices",
        market,
        DAILY_PRICES,
        first=ingested[0],
        last=day,
        columns=["symbol", "trade_date"],
    )
    last = recent.group_by("symbol").agg(last_update=pl.col("trade_date").max())
    stale = (
        _stale(chances, last, pl.col("last_update") >= window[0])
        if len(window) == STALE_AFTER_SESSIONS
        else chances.clear().with_columns(last_update=pl.lit(None, pl.Date))
    )
    return _result(
        stale,
        active_symbols(universe, day).height,
        f"have no stored bar in the {len(window)} ingested sessions {window[0]}..{day}",
        {**facts, "window_sessions": len(window), "window_start": window[0].isoformat()},
        judged=f" on {day}: a stored bar in the last {len(window)} ingested sessions",
    )


def intraday_freshness_result(
    lake: LakeResource,
    market: str,
    now: dt.datetime,
    max_age: dt.timedelta,
    judged: dt.date | None = None,
) -> dg.AssetCheckResult:
    """During a session: passes when every active symbol's latest stored bar started at most
    `max_age` before `now` (the clock starts at the open). Outside sessions it passes, and so
    it does for a `judged` session (the run's partition) that is not the one trading now: a
    closed session's bars are the completeness and bar_count checks' business."""
    session = session_at(market, now)
    if judged is not None and session is not None and session[0] != judged:
        return dg.AssetCheckResult(
            check_name=SYMBOL_FRESHNESS,
            passed=True,
            description=f"{judged} is not the session trading now ({session[0]}): intraday "
            "freshness judges a session only while it trades",
            metadata={"evaluated_at": now.isoformat(), "in_session": False},
        )
    if session is None:
        return dg.AssetCheckResult(
            check_name=SYMBOL_FRESHNESS,
            passed=True,
            description=f"{now.isoformat()} is outside {market} session hours: nothing is due",
            metadata={"evaluated_at": now.isoformat(), "in_session": False},
        )
    day, opens = session
    active = active_symbols(load_universe(lake, market), day)
    recent = lake.read_partitions(
        "intraday_bars",
        market,
        INTRADAY_BARS,
        first=previous_session(market, day),
        last=day,
        columns=["symbol", "bar_start"],
    )
    last = recent.group_by("symbol").agg(last_update=pl.col("bar_start").max())
    # Before max_age has passed since the open, nothing can be stale yet.
    fresh = pl.max_horizontal("last_update", pl.lit(opens)) >= now - max_age
    stale = _stale(active, last, fresh)
    return _result(
        stale,
        len(active),
        f"have no stored bar starting after {(now - max_age).isoformat()}",
        {
            "evaluated_at": now.isoformat(),
            "in_session": True,
            "max_age_hours": max_age.total_seconds() / 3600,
        },
    )


def _judged(context: dg.AssetCheckExecutionContext, market: str) -> dt.date | None:
    """The session a run of a freshness check judges: the last of its partitions, or None
    when it was launched without one (a checks-only job by hand, the hourly schedule)."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return None
    window = context.partition_key_range
    first, last = (dt.date.fromisoformat(k) for k in (window.start, window.end))
    return judged_session(market, first, last)


def _partitioned_check(market: str, dataset: str, description: str, judge):
    """`judge(context, lake)` as the dataset's symbol_freshness check, partitioned like the
    asset: every run that includes it (the UI's Materialize runs all checks of an asset, the
    daily job, the demo) judges the session materialized, never today's. Partitioned checks
    are a preview in Dagster 1.13, hence the warning filter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=dg.AssetKey([market, dataset]),
            name=SYMBOL_FRESHNESS,
            partitions_def=partitions_def(market),
            description=description,
        )(judge)


def daily_freshness_check(market: str) -> dg.AssetChecksDefinition:
    def daily_symbol_freshness(
        context: dg.AssetCheckExecutionContext, lake: LakeResource
    ) -> dg.AssetCheckResult:
        day = _judged(context, market) or due_session(market, evaluation_time())
        if day is None:
            return dg.AssetCheckResult(passed=True, description="no session is due yet")
        return daily_freshness_result(lake, market, day)

    return _partitioned_check(
        market,
        "daily_prices",
        f"Every symbol active on the session has a stored bar in the last "
        f"{STALE_AFTER_SESSIONS} ingested sessions up to it (the last session of a range); "
        f"fails naming the stale symbols, or when the session was not ingested. Runs with the "
        f"prices and by itself at 09:00 {MARKETS[market].timezone} for the due session.",
        daily_symbol_freshness,
    )


def intraday_freshness_check(market: str) -> dg.AssetChecksDefinition:
    def intraday_symbol_freshness(
        context: dg.AssetCheckExecutionContext, lake: LakeResource
    ) -> dg.AssetCheckResult:
        now, judged = evaluation_time(), _judged(context, market)
        return intraday_freshness_result(lake, market, now, intraday_max_age(), judged)

    return _partitioned_check(
        market,
        "intraday_bars",
        "While its session trades, every active symbol's latest stored bar is at most "
        f"{DEFAULT_INTRADAY_MAX_AGE.total_seconds() / 3600:g} hours old ({MAX_AGE_VARIABLE}); "
        "other sessions pass.",
        intraday_symbol_freshness,
    )


@cache
def freshness_checks(market: str) -> list[dg.AssetChecksDefinition]:
    return [daily_freshness_check(market), intraday_freshness_check(market)]


@cache
def freshness_job(market: str, dataset: str):
    """A run of just one dataset's freshness check: cheap, reads the lake, writes nothing."""
    return dg.define_asset_job(
        f"{market}_{dataset}_freshness",
        selection=dg.AssetSelection.checks(
            dg.AssetCheckKey(dg.AssetKey([market, dataset]), SYMBOL_FRESHNESS)
        ),
        description=f"Per-symbol freshness of {market}/{dataset}.",
    )


def freshness_schedules(market: str) -> list[dg.ScheduleDefinition]:
    """09:00 local Tue-Sat for daily prices (the session due that morning); hourly during
    sessions for intraday bars (stopped by default: no schedule ingests intraday bars yet, so
    it would only ever fail)."""
    zone = MARKETS[market].timezone

    @dg.schedule(
        name=f"{market}_daily_freshness",
        job=freshness_job(market, "daily_prices"),
        cron_schedule=DAILY_DEADLINE_CRON,
        execution_timezone=zone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def daily(context: dg.ScheduleEvaluationContext):
        now = context.scheduled_execution_time
        due = due_session(market, now)
        if due is None:
            return dg.SkipReason(f"no {market} session is due at {now.isoformat()}")
        # A job of checks alone has no partitions of its own in Dagster 1.13, so the session
        # goes in the partition tag, which the partitioned check reads as its partition.
        return dg.RunRequest(
            run_key=f"{market}-daily-freshness-{due.isoformat()}",
            tags={PARTITION_TAG: due.isoformat()},
        )

    @dg.schedule(
        name=f"{market}_intraday_freshness",
        job=freshness_job(market, "intraday_bars"),
        cron_schedule="0 * * * 1-5",
        execution_timezone=zone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def intraday(context: dg.ScheduleEvaluationContext):
        now = context.scheduled_execution_time
        if session_at(market, now) is None:
            return dg.SkipReason(f"{now.isoformat()} is outside {market} session hours")
        return dg.RunRequest(run_key=f"{market}-intraday-freshness-{now.isoformat()}")

    return [daily, intraday]
