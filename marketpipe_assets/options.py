"""us/option_chains: fetch every configured underlying's chain, derive greeks, validate, store."""

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import polars as pl

from checks.greeks import DAYS_PER_YEAR, RISK_FREE_RATE, black_scholes, implied_volatility
from checks.markets import (
    MARKETS,
    is_session,
    previous_session,
    session_bounds,
)
from checks.option_rules import (
    IV_RANGE,
    PARITY_TOLERANCE,
    completeness_result,
    option_check_specs,
    option_rules,
    parity_result,
    rules_result,
)
from checks.rulebook import Validated, session_rule, validate
from checks.schemas import (
    OPTION_CHAIN_VENDOR,
    OPTION_CHAINS,
    RAW,
    conform,
    quarantine_schema,
)
from resources.lake import LakeResource
from resources.providers.base import run_sync
from resources.providers.errors import NotFound
from resources.publishing import Batch
from resources.sources.base import (
    Dataset,
    FallbackSource,
    Source,
    SourceUnavailable,
    require,
)
from resources.sources.synthetic import SyntheticSource
from resources.sources.synthetic_options import option_chains

from .ingest import Ingest, Run, Shown, ingested_asset, stage_sessions
from .metadata import run_totals

DATASET = "option_chains"
log = logging.getLogger(__name__)
NEW_YORK = ZoneInfo(MARKETS["us"].timezone)
REGULAR_CLOSE = dt.time(16, 0)  # of a date the calendar does not know (not a session, too far)


class OptionChainConfig(dg.Config):
    risk_free_rate: float = RISK_FREE_RATE
    iv_min: float = IV_RANGE[0]  # exclusive
    iv_max: float = IV_RANGE[1]  # inclusive
    parity_tolerance: float = PARITY_TOLERANCE


def live_session(now: dt.datetime | None = None) -> dt.date:
    """The session a live provider's chain belongs to: today's in New York when today is a
    session, else the latest one before (on a weekend or holiday Yahoo still serves the last
    session's closing quotes)."""
    today = (now or dt.datetime.now(ZoneInfo(MARKETS["us"].timezone))).date()
    if is_session("us", today):
        return today
    previous = previous_session("us", today)
    assert previous is not None  # the calendar starts years before any live quote
    return previous


def fetch(source: Source, underlyings: Sequence[str], sessions: list[dt.date]) -> pl.DataFrame:
    """Vendor columns of every underlying's chain on every session; a chain moves on when a
    source has no options (SourceUnavailable). A symbol without options is simply absent."""
    if isinstance(source, FallbackSource):
        return source.first_available(lambda s: fetch(s, underlyings, sessions))
    if isinstance(source, SyntheticSource):
        return option_chains(source.seed, underlyings, sessions)
    require(source, Dataset.OPTION_CHAINS, "us")
    chains: Any = source  # it declares option chains: it has option_chain (Dataset's contract)
    live = live_session()
    if any(day != live for day in sessions):
        raise SourceUnavailable(
            f"{source.name} serves only the latest session's option chains ({live}); it cannot "
            f"backfill {min(sessions)}..{max(sessions)}: use the synthetic source for past sessions"
        )
    frames, missing = [], []
    for symbol in underlyings:
        try:
            frames.append(run_sync(chains.option_chain(symbol, live)))
        except NotFound as exc:
            missing.append(f"{symbol} ({exc})")
    if missing:  # the completeness check fails on them; the other underlyings are stored
        log.warning("%s options: no chain for %s", source.name, "; ".join(missing))
    return pl.concat(frames) if frames else pl.DataFrame(schema=OPTION_CHAIN_VENDOR)


def fill_implied_volatility(
    frame: pl.DataFrame, rate: float, iv_range: tuple[float, float]
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Keep the vendor's implied volatility where it lies in the rule's range; elsewhere (absent,
    0, absurd) solve it from the mid of a two-sided quote (0 < bid <= ask) and use it when it
    lies in the range. Otherwise the vendor's value stays as sent, so the rules quarantine the
    row with what the vendor said. Counts: vendor (kept), solved (replaced), unsolved."""
    low, high = iv_range
    iv = pl.col("implied_volatility").fill_nan(None)
    rows = frame.select(((iv > low) & (iv <= high)).fill_null(False).not_().arg_true()).to_series()
    todo = frame[rows]
    two_sided = (pl.col("bid") > 0) & (pl.col("ask") >= pl.col("bid"))
    solved = implied_volatility(
        todo.select(pl.when(two_sided).then(pl.col("mid"))).to_series().to_numpy(),
        todo["underlying_price"].to_numpy(),
        todo["strike"].to_numpy(),
        todo["days_to_expiry"].to_numpy() / DAYS_PER_YEAR,
        (todo["option_type"] == "call").fill_null(False).to_numpy(),
        rate,
    )
    with np.errstate(invalid="ignore"):
        take = (solved > low) & (solved <= high)  # NaN (no solution) compares False
    values = frame["implied_volatility"].to_numpy().astype(np.float64)  # a copy; null -> NaN
    values[rows.to_numpy()[take]] = solved[take]
    frame = frame.with_columns(implied_volatility=pl.Series(values).fill_nan(None))
    solved_count, vendor_count = int(take.sum()), len(frame) - len(rows)
    return frame, {"vendor": vendor_count, "solved": solved_count,
                   "unsolved": len(rows) - solved_count}  # fmt: skip


def _close(day: dt.date) -> dt.datetime:
    try:
        return session_bounds("us", day)[1]  # early on half days
    except KeyError:
        return dt.datetime.combine(day, REGULAR_CLOSE, NEW_YORK).astimezone(dt.UTC)


def _quoted(day: dt.date, fetched_at: dt.datetime | None) -> dt.datetime:
    """The moment a chain of session `day` reflects: when it was fetched, inside the session's
    hours; its close for an end-of-day chain (fetched_at None) or one fetched after it."""
    try:
        opens, closes = session_bounds("us", day)
    except KeyError:
        return _close(day)
    return closes if fetched_at is None else min(max(fetched_at, opens), closes)


def days_to_expiry(frame: pl.DataFrame, fetched_at: dt.datetime | None = None) -> pl.Series:
    """Fractional days from the chain's quote moment (_quoted) to the close of the expiration
    session: a contract expiring today still has the hours to the close (whole days would give
    T = 0 and no greeks while it trades), and one quoted at its expiry's close has 0."""
    unit = pl.Datetime("us", "UTC")
    quotes = {d: _quoted(d, fetched_at) for d in frame["quote_date"].drop_nulls().unique()}
    closes = {d: _close(d) for d in frame["expiration"].drop_nulls().unique()}
    seconds = frame.select(
        (
            pl.col("expiration").replace_strict(closes, default=None, return_dtype=unit)
            - pl.col("quote_date").replace_strict(quotes, default=None, return_dtype=unit)
        ).dt.total_microseconds()
        / 1e6
    ).to_series()
    return (seconds / 86_400.0).cast(pl.Float64).alias("days_to_expiry")


def derive(
    raw: pl.DataFrame,
    rate: float = RISK_FREE_RATE,
    iv_range: tuple[float, float] = IV_RANGE,
    fetched_at: dt.datetime | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The contract's columns: vendor columns plus mid, spread, days to expiry (days_to_expiry:
    fractional, to the expiry's close; `fetched_at` is when a live chain was fetched, None for
    end-of-day chains), moneyness (strike / underlying), the implied volatility
    (fill_implied_volatility) and greeks from it (theta per calendar day, vega per vol point);
    and how many IVs were vendor's / solved."""
    frame = raw.with_columns(
        mid=(pl.col("bid") + pl.col("ask")) / 2,
        spread=pl.col("ask") - pl.col("bid"),
        days_to_expiry=days_to_expiry(raw, fetched_at),
        moneyness=pl.col("strike") / pl.col("underlying_price"),
    )
    frame, iv_counts = fill_implied_volatility(frame, rate, iv_range)
    greeks = black_scholes(
        frame["underlying_price"].to_numpy(),
        frame["strike"].to_numpy(),
        frame["days_to_expiry"].to_numpy() / DAYS_PER_YEAR,
        frame["implied_volatility"].to_numpy(),
        (frame["option_type"] == "call").fill_null(False).to_numpy(),
        rate,
    )
    frame = frame.with_columns(pl.Series(n, greeks[n]) for n in ("delta", "gamma", "theta", "vega"))
    frame = conform(frame, OPTION_CHAINS, what="option chains")
    return frame.with_columns(pl.col(pl.Float64).fill_nan(None)), iv_counts


def _fetch_chains(run: Run) -> pl.DataFrame:
    underlyings = run.market_data.underlyings()
    source = run.market_data.source("us")
    fetched_at = dt.datetime.now(dt.UTC)
    raw = fetch(source, underlyings, run.sessions)
    run.note_failures(source)
    failures = run.failures or []
    chain = source.sources if isinstance(source, FallbackSource) else [source]
    # Synthetic chains are end-of-day quotes; a live provider's are as of the fetch.
    live = not isinstance(chain[len(failures)], SyntheticSource)
    run.facts.update(
        underlyings=underlyings,
        served_by=chain[len(failures)].name if failures else source.name,
        fetched_at=fetched_at if live else None,
    )
    return raw


def _derive_chains(run: Run, raw: pl.DataFrame) -> pl.DataFrame:
    config = run.config
    frame, iv_counts = derive(
        raw, config.risk_free_rate, (config.iv_min, config.iv_max), run.facts["fetched_at"]
    )
    run.facts["iv_counts"] = iv_counts
    return frame


def _split_chains(run: Run, frame: pl.DataFrame) -> Validated:
    rules = option_rules((run.config.iv_min, run.config.iv_max))
    validated = validate(frame, (*rules, session_rule("quote_date", tuple(run.sessions))))
    quarantined = validated.quarantined.select(*quarantine_schema(OPTION_CHAINS), RAW)
    return Validated(validated.clean, quarantined, validated.violation_counts)


def _validate_chains(run: Run, raw: pl.DataFrame) -> Validated:
    """Derived before validation: the rules judge the solved IVs and greeks too."""
    return _split_chains(run, _derive_chains(run, raw))


def _check_chains(run: Run, stored: pl.DataFrame, validated: Validated) -> list:
    config = run.config
    rules = option_rules((config.iv_min, config.iv_max))
    return [
        rules_result(stored, validated, rules),
        completeness_result(stored, run.facts["underlyings"], run.sessions),
        parity_result(stored, config.risk_free_rate, config.parity_tolerance),
    ]


def _shown_chains(run: Run, stored: pl.DataFrame, counts) -> Shown:
    iv_counts = run.facts["iv_counts"]
    return Shown(
        extra={
            "underlyings": len(run.facts["underlyings"]),
            "source": run.facts["served_by"],
            # Of all fetched contracts: IVs kept as the vendor sent them, solved from the mid
            # (vendor's absent, 0 or out of range), and neither (quarantined by the rules).
            **run_totals(
                run.sessions,
                volume_missing=stored["volume"].null_count(),
                iv_vendor=iv_counts["vendor"],
                iv_solved=iv_counts["solved"],
                iv_unsolved=iv_counts["unsolved"],
            ),
        }
    )


OPTION_CHAINS_INGEST = Ingest(
    dataset=DATASET,
    description="Chains of MARKETPIPE_OPTION_UNDERLYINGS, every expiration within 90 days, with "
    "greeks; implied volatility solved from the mid where the vendor's is absent or absurd; rows "
    "breaking a rule go to quarantine with their rules.",
    check_specs=option_check_specs,
    fetch=_fetch_chains,
    validate=_validate_chains,
    checks=_check_chains,
    shown=_shown_chains,
    date_column="quote_date",
    config=OptionChainConfig,
    reads_universe=False,  # the chains of MARKETPIPE_OPTION_UNDERLYINGS, not the universe's
)


def option_chains_asset() -> dg.AssetsDefinition:
    return ingested_asset("us", OPTION_CHAINS_INGEST)


@dataclass(frozen=True)
class Stored:
    stored: pl.DataFrame
    quarantined: pl.DataFrame
    iv_counts: dict[str, int]
    check_results: list[dg.AssetCheckResult]
    batch: Batch  # staged, not yet published


Stage = Callable[[str], AbstractContextManager]


def store_chains(
    lake: LakeResource,
    raw: pl.DataFrame,
    underlyings: Sequence[str],
    sessions: list[dt.date],
    config: OptionChainConfig,
    stage: Stage = lambda name: nullcontext(),
    fetched_at: dt.datetime | None = None,
    run_id: str = "",
) -> Stored:
    """The asset's data work outside Dagster, hook by hook, each step timed by `stage` (the
    bench's measure of it)."""
    # Outside Dagster there is no context nor market data resource: the hooks run here (derive,
    # validate, checks) read neither.
    run = Run(None, lake, None, "us", sessions, config)  # type: ignore[arg-type]
    run.facts.update(underlyings=underlyings, fetched_at=fetched_at)
    with stage("derive"):
        frame = _derive_chains(run, raw)
    with stage("validate"):
        validated = _split_chains(run, frame)
    with stage("write"):
        staged = stage_sessions(
            lake,
            run_id,
            DATASET,
            "us",
            sessions,
            sent=len(raw),
            stored=validated.clean,
            quarantined=validated.quarantined,
            date_column="quote_date",
        )
    with stage("checks"):
        results = _check_chains(run, validated.clean, validated)
    return Stored(
        validated.clean, staged.quarantined, run.facts["iv_counts"], results, staged.batch
    )
