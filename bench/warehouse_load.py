"""(j) The warehouse load of a ten-year backfill: marketpipe's load path vs a bare COPY.

Generates and stores daily prices and indicators with the same functions the assets call
(bench/datawork.py), then, in one fresh Postgres database:
- marketpipe: load_sessions (the <market>/warehouse asset's load: lake reads in batches, one
  DELETE of the sessions and batched COPY per table, one transaction), then the views' refresh;
- then one more session re-loaded and the views refreshed: the daily run once history is stored;
- bare: the same parquet files read whole and COPYed once per table into identical empty tables
  (same primary key and index), no deletes, no batching: once as stored (date after date) and
  once sorted by key as marketpipe's load sorts, the best a bare COPY of this data does.
Rows per second count both tables' rows. `python -m bench.warehouse_load [--symbols N
--sessions N]` prints JSON.
"""

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import polars as pl
import psycopg2
from psycopg2 import sql

from checks.markets import partition_dates
from marketpipe_assets.warehouse import load_sessions
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.warehouse import TABLES, WarehouseResource
from tests.postgres_db import fresh_database

from . import datawork
from .common import Stages, past_keys, row

MARKET = "us"


def bare_copy(url: str, lake: LakeResource, market: str, *, key_order: bool) -> dict[str, float]:
    """Seconds per table to COPY the lake's files into empty copies of the warehouse tables,
    as stored (date after date) or sorted by key first as marketpipe's load does."""
    seconds = {}
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for table in TABLES:
            bare = sql.Identifier(f"bare_{'sorted_' if key_order else ''}{table}")
            cur.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                    bare, sql.Identifier(table)
                )
            )
            conn.commit()
            started = time.perf_counter()
            frame = pl.read_parquet(f"{lake.market_dir(table, market)}/date=*/*.parquet")
            if key_order:
                frame = frame.sort("symbol", "trade_date")
            buffer = io.BytesIO()
            frame.select(pl.lit(market).alias("market"), *TABLES[table]).write_csv(
                buffer, include_header=False
            )
            buffer.seek(0)
            cur.copy_expert(sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv)").format(bare), buffer)
            conn.commit()
            seconds[table] = time.perf_counter() - started
    return seconds


def measure(symbols: int = 2500, sessions: int = 2500, market: str = MARKET) -> dict:
    keys = past_keys(market, sessions)
    days = partition_dates(keys)
    prepare = Stages()
    with tempfile.TemporaryDirectory(prefix="marketpipe-wh-") as root:
        lake = LakeResource(url=str(Path(root) / "lake"))
        market_data = MarketDataResource(synthetic_symbols=symbols, landing_url=f"{root}/landing")
        datawork.prepare_universe(lake, market_data, market)
        datawork.prices(prepare, lake, market_data, market, days)
        datawork.indicators(prepare, lake, market, days)
        for table, schema in TABLES.items():  # warm the page cache for both contestants alike
            lake.read_partitions(table, market, schema)
        with fresh_database("marketpipe_bench") as url:
            warehouse = WarehouseResource(url=url)
            load = load_sessions(lake, warehouse, market, days)
            started = time.perf_counter()
            view_rows = warehouse.refresh_views()
            refresh = time.perf_counter() - started
            # What each scheduled day costs once ten years are stored: one session, all views.
            daily = load_sessions(lake, warehouse, market, days[-1:])
            started = time.perf_counter()
            warehouse.refresh_views()
            daily_refresh = time.perf_counter() - started
            bare = bare_copy(url, lake, market, key_order=False)
            bare_sorted = bare_copy(url, lake, market, key_order=True)
    rows = {table: load.rows(table) for table in TABLES}
    total = sum(rows.values())
    ours, theirs = total / load.seconds, total / sum(bare.values())
    return {
        "market": market,
        "symbols": symbols,
        "sessions": [keys[0], keys[-1], len(keys)],
        "rows": rows,
        "marketpipe_load_s": round(load.seconds, 2),
        "marketpipe_rows_per_s": round(ours),
        "bare_copy_s": {t: round(s, 2) for t, s in bare.items()},
        "bare_copy_rows_per_s": round(theirs),
        "ratio_to_bare_copy": round(ours / theirs, 3),
        "bare_copy_key_order_s": {t: round(s, 2) for t, s in bare_sorted.items()},
        "bare_copy_key_order_rows_per_s": round(total / sum(bare_sorted.values())),
        "refresh_views_s": round(refresh, 2),
        "view_rows": view_rows,
        "one_session_load_s": round(daily.seconds, 3),
        "one_session_refresh_views_s": round(daily_refresh, 2),
        "prepare_s": prepare.rounded(),
    }


def run(symbols: int = 2500, sessions: int = 2500, market: str = MARKET) -> dict:
    """The `make bench` table row: rates of both paths and their ratio (no fixed target)."""
    out = measure(symbols, sessions, market)
    return row(
        f"j. warehouse load {sum(out['rows'].values()):,} rows",
        "report vs bare COPY",
        f"{out['marketpipe_rows_per_s']:,} rows/s vs COPY {out['bare_copy_rows_per_s']:,} "
        f"(sorted {out['bare_copy_key_order_rows_per_s']:,}); "
        f"views {out['refresh_views_s']:.1f} s",
        out["ratio_to_bare_copy"],
        "INFO",
        details=out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, default=2500)
    parser.add_argument("--sessions", type=int, default=2500)
    parser.add_argument("--market", default=MARKET, choices=["krx", "us"])
    args = parser.parse_args()
    print(json.dumps(run(args.symbols, args.sessions, args.market)))


if __name__ == "__main__":
    main()
