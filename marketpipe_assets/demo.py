"""`make demo`: materialize the 20 most recent sessions of every market and print a summary.

Runs in process against the real instance in $DAGSTER_HOME, so the runs, materializations and
check results show up in the UI (`make ui`) afterwards. The console shows only the summary and
what went wrong; Dagster's event stream is in the instance, where the UI reads it.
"""

import datetime as dt
import logging
import sys
import textwrap
import time

import dagster as dg
import polars as pl

from checks.markets import MARKETS, partition_dates, partitions_def, session_bounds
from checks.price_checks import completeness_by_session
from checks.schemas import DAILY_PRICES, INDICATORS

from .automation import RANGE_END_TAG, RANGE_START_TAG
from .datasets import names
from .definitions import assets, defs
from .prices import load_universe

SESSIONS = 20
# The contract's demo: daily prices (with their checks) and indicators.
# Dagster's console logger would echo every event (about 130 DEBUG lines); failures and warnings
# are printed below in a line or two each. Events still reach the instance's event log.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
WIDTH = 100
PER_LINE = 7  # completeness figures per line
MAX_WARNINGS = 5  # per run; the rest are in the UI


def checks_of(keys: set[dg.AssetKey]) -> list[dg.AssetsDefinition]:
    """Every separately defined check of these assets (GE, symbol freshness), as the UI's
    Materialize runs them, so the demo leaves none of them unevaluated."""
    return [
        check
        for check in defs.asset_checks or []
        if all(key.asset_key in keys for key in check.check_keys)
    ]


def _run(selection, instance, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        selection,
        instance=instance,
        resources=defs.resources,
        run_config=QUIET,
        raise_on_error=False,
        **kwargs,
    )


def _line(text: str, indent: str = "   ", max_lines: int = 2) -> str:
    """`text` on at most `max_lines` lines of WIDTH (paths are never cut), the rest elided."""
    return textwrap.fill(
        text,
        WIDTH,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        max_lines=max_lines,
        placeholder=" …",
        break_long_words=False,
    )


def _problems(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance) -> list[str]:
    """A line or two per failed step (its innermost error: ours, in our words) and the run's
    warnings (e.g. a source of a fallback chain that could not serve)."""
    lines = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        text = error.message.strip() if error else "(no error recorded)"
        # The message starts with the exception's dotted class path; its words are what count.
        if error and error.cls_name and f"{error.cls_name}: " in text.split("\n")[0]:
            text = text.split(f"{error.cls_name}: ", 1)[1]
        lines.append(_line(f"FAILED {event.step_key}: {text}"))
    warnings = []
    for entry in instance.all_logs(result.run_id):
        # An int (a logging level) in every stored entry; dagster types it str | int.
        if not entry.is_dagster_event and int(entry.level) >= logging.WARNING:
            first = (entry.user_message.strip().splitlines() or [""])[0]
            if first and first not in warnings:
                warnings.append(first)
    lines.extend(_line(f"warning: {w}") for w in warnings[:MAX_WARNINGS])
    if len(warnings) > MAX_WARNINGS:
        lines.append(_line(f"... {len(warnings) - MAX_WARNINGS} more warnings in the UI"))
    return lines


def _completeness(lake, market: str, stored: pl.DataFrame, sessions: list[dt.date]) -> list[str]:
    """Stored ÷ active symbols per session, in percent, computed from the lake by the same rule
    as the completeness check."""
    try:
        universe = load_universe(lake, market)
    except dg.Failure:
        return ["   completeness: no universe stored"]
    by_session = completeness_by_session(stored, universe, sessions)
    figures = [
        f"{day:%m-%d} {100 * have / active if active else 100:.1f}".ljust(11)
        for day, active, have in by_session.select("trade_date", "active", "stored").rows()
    ]
    lines = ["   completeness per session, % of active symbols stored:"]
    for start in range(0, len(figures), PER_LINE):
        lines.append("     " + " ".join(figures[start : start + PER_LINE]).rstrip())
    return lines


def _outcome(evaluation: dg.AssetCheckEvaluation) -> str:
    if evaluation.passed:
        return "PASS"
    if evaluation.blocking:
        return "FAIL (blocking)"
    return "WARN" if evaluation.severity == dg.AssetCheckSeverity.WARN else "FAIL"


def _checks(market: str, result: dg.ExecuteInProcessResult) -> list[str]:
    """Every check evaluated in the run, whatever the selection holds, under its asset."""
    evaluations = sorted(
        (e for e in result.get_asset_check_evaluations() if e.asset_key.path[0] == market),
        key=lambda e: e.asset_key.path[-1],
    )
    if not evaluations:
        return ["   checks: none evaluated (see the failures below)"]
    width = max(len(_outcome(e)) for e in evaluations)
    lines, asset = [], None
    for evaluation in evaluations:
        if evaluation.asset_key.path[-1] != asset:
            asset = evaluation.asset_key.path[-1]
            lines.append(f"   checks of {asset}:")
        outcome = f"{evaluation.check_name:<20} {_outcome(evaluation):<{width}}"
        # One line each, so the summary fits one screen; the UI has the whole description.
        lines.append(_line(f"{outcome}  {evaluation.description or ''}", "     ", max_lines=1))
    return lines


def _summary(market: str, keys: list[str], result: dg.ExecuteInProcessResult, lake) -> list[str]:
    sessions = partition_dates(keys)
    bounds = {"first": sessions[0], "last": sessions[-1]}
    stored = lake.read_partitions("daily_prices", market, DAILY_PRICES, **bounds)
    quarantined = lake.read_quarantine("daily_prices", market, DAILY_PRICES, **bounds)
    events = result.get_asset_materialization_events()
    materialized = {e.asset_key.path[-1] for e in events if e.asset_key is not None}
    if "indicators" in materialized:
        indicators = lake.read_partitions(
            "indicators", market, INDICATORS, columns=["symbol"], **bounds
        )
        derived = f"indicators {len(indicators):,} rows"
    else:
        derived = "indicators not computed in this run"
    lines = [
        f"== {market} ({MARKETS[market].calendar}): {len(keys)} sessions {keys[0]}..{keys[-1]}"
        f"  run {result.run_id[:8]}",
        f"   daily_prices {len(stored):,} rows stored, {len(quarantined):,} quarantined;  "
        + derived,
        *_completeness(lake, market, stored, sessions),
        *_checks(market, result),
    ]
    return lines


def closed_sessions(market: str) -> list[str]:
    """Partition keys of the sessions that have closed: today's session is a partition from
    midnight (for the 18:00 schedule), but its bars do not exist before the close."""
    now = dt.datetime.now(dt.UTC)
    keys = list(partitions_def(market).get_partition_keys())
    while keys and session_bounds(market, dt.date.fromisoformat(keys[-1]))[1] > now:
        keys = keys[:-1]
    return keys


def main() -> int:
    started = time.monotonic()
    assert defs.resources is not None  # definitions.py gives it its resources
    lake = defs.resources["lake"]
    ok = True
    with dg.DagsterInstance.get() as instance:
        universes = [a for a in assets if a.key.path[1] == "universe"]
        result = _run(universes, instance)
        ok &= result.success
        lines = _problems(result, instance)
        for market in MARKETS:
            keys = closed_sessions(market)[-SESSIONS:]
            shown = names(in_demo=True)
            chosen = [a for a in assets if a.key.path[0] == market and a.key.path[1] in shown]
            selection = [*chosen, *checks_of({a.key for a in chosen})]
            result = _run(
                selection, instance, tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
            )
            ok &= result.success
            lines += ["", *_summary(market, keys, result, lake), *_problems(result, instance)]
    datasets = "daily_prices, indicators, quarantine/daily_prices, universe"
    folders = ", ".join(f"market={m}" for m in MARKETS)
    lines += ["", _line(f"Data in {lake.uri(lake.root)}: {datasets} (folders {folders})", "")]
    print("\n".join(lines))
    example = f"{lake.uri(lake.root)}/daily_prices/*/*/*.parquet"
    print(f"Query it with DuckDB:\n  SELECT market, date, count(*) FROM read_parquet('{example}',")
    print("    hive_partitioning=true) GROUP BY ALL ORDER BY ALL")
    outcome = "Done" if ok else "Finished with failures (above)"
    print(f"{outcome} in {time.monotonic() - started:.1f} s. Open the UI with `make ui`.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
