"""Metadata a person reads at a glance, built here for every asset: typed values (paths, ints,
percents, tables, markdown), and each session's own facts attached to its own partition.

A single-run backfill writes one materialization event per partition, and Dagster copies the
MaterializeResult's metadata into every one of them; a range's totals there would read as each
day's. So each session's facts go to its partition (`context.add_asset_metadata(...,
partition_key=...)`, which overrides the copied value) and the run's totals are named `range_*`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import cast

import dagster as dg
import polars as pl

from checks.metadata import markdown_table
from checks.schemas import FILED_UNDER


def percent(fraction: float) -> float:
    """A fraction as a percent, two decimals: the one unit of completeness and coverage."""
    return round(100 * float(fraction), 2)


def accounted(
    what: str,
    sent: int,
    stored: pl.DataFrame,
    quarantined: pl.DataFrame,
    column: str = "trade_date",
) -> dict[str, pl.DataFrame]:
    """The per-session counts that show nothing was dropped (`counts` of session_metadata):
    `sent` = `stored` + `quarantined`, the quarantine counted where it is filed. Call it before
    staging: a run whose rows do not add up to what its source sent fails, publishing nothing."""
    if len(stored) + len(quarantined) != sent:
        raise dg.Failure(
            f"{what}: {sent} rows sent but {len(stored)} stored and {len(quarantined)} "
            "quarantined; nothing was published. This is a bug in marketpipe: please report it."
        )
    where = FILED_UNDER if FILED_UNDER in quarantined.columns else column
    filed = quarantined.select(pl.col(where).alias(column))
    return {
        "sent": pl.concat([stored.select(column), filed]),
        "stored": stored,
        "rows": stored,
        "quarantined": filed,
    }


def path_value(uri: str) -> dg.MetadataValue:
    return dg.MetadataValue.path(uri)


def counts_table(counts: Mapping[str, int], key: str, value: str = "rows") -> dg.MetadataValue:
    """`{name: count}` as a two-column table, largest first (e.g. rows per source)."""
    schema = dg.TableSchema(columns=[dg.TableColumn(key, "string"), dg.TableColumn(value, "int")])
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    records = [dg.TableRecord({key: name, value: int(n)}) for name, n in ordered]
    return dg.MetadataValue.table(records, schema=schema)


def failures_table(failures: Sequence[Mapping[str, str]]) -> dg.MetadataValue:
    """The sources of a fallback chain that could not serve, and why (never a secret)."""
    names = ("source", "error", "reason")
    schema = dg.TableSchema(columns=[dg.TableColumn(name, "string") for name in names])
    records = [dg.TableRecord({name: str(f.get(name, "")) for name in names}) for f in failures]
    return dg.MetadataValue.table(records, schema=schema)


def counts_by_session(
    sessions: Sequence[dt.date] | Sequence[str], column: str = "trade_date", **frames: pl.DataFrame
) -> pl.DataFrame:
    """One row per session (or partition key): `column`, then each frame's row count in it
    (0 if none)."""
    dtype = pl.String if sessions and isinstance(sessions[0], str) else pl.Date
    out = pl.DataFrame({column: list(sessions)}, schema={column: dtype})
    for name, frame in frames.items():
        # Undated rows (quarantine only) are filed under the run's last session: counted there.
        dated = frame.select(pl.col(column).fill_null(max(sessions)))
        counts = dated.group_by(column).agg(pl.len().cast(pl.Int64).alias(name))
        out = out.join(counts, on=column, how="left").with_columns(pl.col(name).fill_null(0))
    return out


# Each add_asset_metadata call validates its key against the partitions definition, about 2-7 ms
# with our calendars' exclusions (17-45 s over a 2,500-session backfill, measured): longer
# ranges get the range_* totals only, and each session's figures stay in the checks' tables.
PER_PARTITION_LIMIT = 250


def per_session(
    context: dg.AssetExecutionContext,
    facts: pl.DataFrame,
    column: str = "trade_date",
    tables: Mapping[str, Mapping[dt.date, dg.MetadataValue]] | None = None,
    unit: str = "sessions",
) -> dict:
    """Attaches each partition's facts (one row of `facts` per partition: integer counts, float
    percents, text) and `tables` (name -> partition -> value) to its partition. Returns the
    metadata of the run as a whole: nothing for one partition, else the range's first and last
    partition and their count (`range_<unit>`), its integer facts summed and its percents'
    minimum, all named `range_*`. `column` holds session dates, or partition keys as strings
    (hour partitions)."""
    tables = tables or {}
    values = [name for name in facts.columns if name != column]
    for row in facts.iter_rows(named=True) if len(facts) <= PER_PARTITION_LIMIT else ():
        day = row[column]
        entry = {name: _typed(row[name]) for name in values}
        entry.update({name: by_day[day] for name, by_day in tables.items() if day in by_day})
        context.add_asset_metadata(entry, partition_key=_key(day))
    if len(facts) <= 1:
        return {}
    totals: dict[str, int | float] = {}
    for name in values:
        if facts[name].dtype.is_integer():
            totals[f"range_{name}"] = int(facts[name].sum())
        elif facts[name].dtype.is_float():
            # polars types a Series' min as any Python value or None; this is a float's.
            totals[f"range_min_{name}"] = float(cast(float, facts[name].min()))
    return {
        "range_first": _key(facts[column].min()),
        "range_last": _key(facts[column].max()),
        f"range_{unit}": len(facts),
        **totals,
    }


def run_totals(partitions: Sequence, **figures) -> dict:
    """Figures of the whole run: as they are for one partition, named `range_*` for more."""
    prefix = "range_" if len(partitions) > 1 else ""
    return {f"{prefix}{name}": value for name, value in figures.items()}


def _key(value) -> str:
    return value if isinstance(value, str) else value.isoformat()


def _typed(value):
    if value is None or isinstance(value, bool | str):
        return value
    return int(value) if isinstance(value, int) else float(value)


def session_metadata(
    context: dg.AssetExecutionContext,
    sessions: Sequence[dt.date],
    *,
    counts: Mapping[str, pl.DataFrame],
    uri: str,
    percents: pl.DataFrame | None = None,
    by_source: pl.DataFrame | None = None,
    failures: Sequence[Mapping[str, str]] | None = None,
    shown: pl.DataFrame | None = None,
    column: str = "trade_date",
) -> dict:
    """The metadata of a session-partitioned asset: per session (on its partition) the row
    count of each of `counts`' frames, the `percents` columns (`column` plus one per percent)
    and the rows per source of `by_source`; for the run, the `range_*` totals, where the data
    is, the sources that could not serve (`failures`, when a chain was asked) and a preview of
    `shown` (one-session runs only)."""
    facts = counts_by_session(sessions, column, **counts)
    if percents is not None:
        facts = facts.join(percents, on=column, how="left")
    tables = {}
    if by_source is not None:
        grouped: dict[dt.date, dict[str, int]] = {}
        for day, source, n in by_source.group_by(column, "source").agg(pl.len()).iter_rows():
            grouped.setdefault(day, {})[source] = n
        tables["rows_by_source"] = {
            day: counts_table(grouped.get(day, {}), "source") for day in sessions
        }
    return {
        **per_session(context, facts, column, tables),
        "path": path_value(uri),
        **({"source_failures": failures_table(failures)} if failures is not None else {}),
        **(preview(shown, sessions) if shown is not None else {}),
    }


def preview(frame: pl.DataFrame, sessions: Sequence) -> dict:
    """A preview for a single-session run. A range run's metadata is copied into every
    partition's materialization event, where a preview of the range would mislead and, over
    thousands of partitions, doubles the size of Dagster's event log."""
    return {"preview": dg.MetadataValue.md(markdown_table(frame))} if len(sessions) == 1 else {}
