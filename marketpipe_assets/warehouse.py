"""`<market>/warehouse`: the market's stored sessions loaded into the Postgres warehouse.

Optional: the assets and their resource exist only when MARKETPIPE_WAREHOUSE_URL is set.
"""

import datetime as dt
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import dagster as dg
import polars as pl
import psycopg2

from checks.markets import MARKETS, partition_dates, partitions_def
from resources.lake import LakeResource
from resources.warehouse import (
    TABLES,
    WarehouseLoadError,
    WarehouseResource,
    copy_rows,
    delete_sessions,
    session_counts,
)

from .declarative import after_checked_inputs
from .metadata import counts_table, run_totals

WAREHOUSE_URL_VARIABLE = "MARKETPIPE_WAREHOUSE_URL"
MATCHES_LAKE = "matches_lake"
# Sessions read from the lake per COPY round: a year of 2,500 symbols is ~0.6M rows per table.
SESSIONS_PER_BATCH = 250


@dataclass
class Load:
    """What one load wrote: rows per table and per session, as read from the lake."""

    sessions: list[dt.date]
    lake_counts: dict[str, Counter] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def rows(self, table: str) -> int:
        return sum(self.lake_counts[table].values())


def load_sessions(
    lake: LakeResource, warehouse: WarehouseResource, market: str, sessions: list[dt.date]
) -> Load:
    """Replace the sessions' rows of every warehouse table with the lake's, in one transaction."""
    started, load = time.perf_counter(), Load(sorted(sessions))
    try:
        with warehouse.transaction() as cur:
            # Table after table: one table's index pages at a time compete for Postgres' cache.
            for table, schema in TABLES.items():
                load.deleted[table] = delete_sessions(cur, table, market, load.sessions)
                counts: Counter[dt.date] = Counter()
                load.lake_counts[table] = counts
                for i in range(0, len(load.sessions), SESSIONS_PER_BATCH):
                    chunk = load.sessions[i : i + SESSIONS_PER_BATCH]
                    frame = lake.read_partitions(
                        table, market, schema, first=chunk[0], last=chunk[-1]
                    ).filter(pl.col("trade_date").is_in(chunk))
                    copy_rows(cur, table, market, frame)
                    counts.update(dict(frame["trade_date"].value_counts().rows()))
    except psycopg2.Error as exc:
        raise WarehouseLoadError(
            f"{market}: loading sessions {load.sessions[0]}..{load.sessions[-1]} into the "
            f"warehouse failed and was rolled back (previous rows kept): "
            f"{type(exc).__name__}: {str(exc).strip()}"
        ) from exc
    load.seconds = time.perf_counter() - started
    return load


def matches_lake_result(warehouse: WarehouseResource, market: str, load: Load):
    """Passes when every table holds, for every loaded session, as many rows as the lake."""
    mismatches = []
    with warehouse.transaction() as cur:
        for table in TABLES:
            stored = session_counts(cur, table, market, load.sessions)
            for day in load.sessions:
                lake_rows, rows = load.lake_counts[table].get(day, 0), stored.get(day, 0)
                if lake_rows != rows:
                    mismatches.append(f"{table} {day}: lake {lake_rows}, warehouse {rows}")
    return dg.AssetCheckResult(
        check_name=MATCHES_LAKE,
        passed=not mismatches,
        description="; ".join(mismatches[:10]) or "every session's row count equals the lake's",
        metadata={"sessions_checked": len(load.sessions), "mismatches": len(mismatches)},
    )


def warehouse_asset(market: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([market, "warehouse"])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey([market, "daily_prices"]), dg.AssetKey([market, "indicators"])],
        partitions_def=partitions_def(market),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=[
            dg.AssetCheckSpec(
                MATCHES_LAKE,
                asset=key,
                blocking=True,
                description="Each loaded session has as many warehouse rows as the lake, "
                f"in every table ({', '.join(TABLES)}).",
            )
        ],
        # Loads every session whose prices or indicators changed, once their blocking checks passed.
        automation_condition=after_checked_inputs(),
        group_name=market,
        kinds={"postgres", "polars"},
    )
    def warehouse(
        context: dg.AssetExecutionContext, lake: LakeResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """The sessions' daily prices and indicators in Postgres (tables daily_prices and
        indicators), then the weekly_bars, monthly_bars and latest_prices views refreshed."""
        # Replaces exactly this run's sessions in every table, in one transaction.
        load = load_sessions(lake, warehouse, market, partition_dates(context.partition_keys))
        started = time.perf_counter()
        view_rows = warehouse.refresh_views()
        return dg.MaterializeResult(
            metadata={
                **run_totals(
                    load.sessions,
                    **{f"{table}_rows": load.rows(table) for table in TABLES},
                    **{f"{table}_rows_replaced": n for table, n in load.deleted.items()},
                ),
                **({"range_sessions": len(load.sessions)} if len(load.sessions) > 1 else {}),
                "load_seconds": round(load.seconds, 3),
                "refresh_seconds": round(time.perf_counter() - started, 3),
                "view_rows": counts_table(view_rows, "view"),
            },
            check_results=[matches_lake_result(warehouse, market, load)],
        )

    return warehouse


def warehouse_assets() -> list[dg.AssetsDefinition]:
    """Each market's warehouse asset, or none when no warehouse is configured."""
    if not os.environ.get(WAREHOUSE_URL_VARIABLE):
        return []
    return [warehouse_asset(market) for market in MARKETS]


def warehouse_resources() -> dict[str, WarehouseResource]:
    """The `warehouse` resource when configured; the URL is read at run time (it may hold a
    password), so the UI shows the variable's name rather than its value."""
    if not os.environ.get(WAREHOUSE_URL_VARIABLE):
        return {}
    return {"warehouse": WarehouseResource(url=dg.EnvVar(WAREHOUSE_URL_VARIABLE))}
