"""`make bench` / `python -m bench.run`: run the benchmarks, print a table, write JSON.

--quick scales everything down (250 symbols x 250 sessions) to check the bench itself works.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings

import dagster as dg

from . import (
    backfill,
    indicators_vs_talib,
    options_chain,
    rules_vs_ge,
    trades_aggregate,
    warehouse_load,
)
from .common import REPO, past_keys, row, verdict

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
DAILY_TARGET_S = 3.0


def machine() -> dict:
    import polars
    import talib

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "dagster": dg.__version__,
        "polars": polars.__version__,
        "talib": talib.__version__,
        "load_average": os.getloadavg(),
    }


def daily(market: str, symbols: int) -> dict:
    env = {**os.environ, "DAGSTER_EVENT_BATCH_SIZE": str(backfill.BATCH)}
    cmd = [sys.executable, "-m", "bench.daily", "--market", market, "--symbols", str(symbols)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    cold, warm = out["first_run"]["seconds"], out["second_run"]["seconds"]
    data = out["data_work"]["seconds"]
    return row(
        f"d. one partition, {symbols:,} symbols, in process",
        f"< {DAILY_TARGET_S:.0f} s",
        f"{cold:.2f} s; warm {warm:.2f} = data {data:.2f} + Dagster {warm - data:.2f}",
        cold / DAILY_TARGET_S,
        verdict(cold < DAILY_TARGET_S),
        **out,
    )


def ingest(symbols: int, rate: int) -> dict:
    """(e) KIS-format ingestion at the rate limit (30-80 ms simulated latency) and the client's
    own overhead at an unlimited rate. The routine run is scaled down (400 symbols at 100/s);
    `--kis-full` runs the issue's 2,500 symbols at 20/s (about 130 s)."""
    from . import ingest_kis

    out = ingest_kis.run(symbols=symbols, rate=rate)
    ratio = out["ratio_to_limit"]
    return row(
        f"e. KIS ingestion, {symbols:,} symbols at {rate}/s",
        f">= {ingest_kis.TARGET_RATIO:.0%} of the limit",
        f"{out['requests_per_s']:.1f} req/s; unlimited "
        f"{out['unlimited']['requests_per_s']:.0f} req/s",
        ratio,
        verdict(ratio >= ingest_kis.TARGET_RATIO),
        details=out,
    )


def order_book_session(symbols: int) -> dict:
    """(f) One session of one-minute 10-level snapshots: validate, derive, store vs bare polars."""
    from . import order_books

    out = order_books.run(symbols=symbols)
    return row(
        f"f. order books, {symbols:,} symbols x 1-min session",
        "ratio to bare polars pass",
        f"{out['marketpipe_s']:.1f} s vs bare {out['bare_polars_s']:.1f} s "
        f"({out['rows'] / 1e6:.1f}M rows)",
        out["ratio_to_bare"],
        "INFO",
        details=out,
    )


def trade_ingest(trades: int) -> dict:
    """(h) Sustained websocket ingest through `marketpipe collect` into the spool and lake."""
    from . import trades_ingest

    out = trades_ingest.run(trades)
    per_s = out["end_to_end_per_s"]
    return row(
        f"h. trade ingest, {trades:,} trades, websocket -> lake",
        f">= {out['target_per_s']:,}/s, 0 lost",
        f"{per_s:,}/s into lake ({out['receive_per_s']:,}/s received); "
        f"lost {out['lost']}, dup {out['duplicates']}",
        per_s / out["target_per_s"],
        "FAIL" if out["lost"] or out["duplicates"] else verdict(out["meets_target"]),
        details=out,
    )


def table(rows: list[dict]) -> str:
    lines = [f"{'benchmark':<50} {'target':<28} {'measured':<48} {'ratio':>6}  status"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            f"{r['bench']:<50} {r['target']:<28} {r['measured']:<48} {ratio:>6}  {r['status']}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--market", default="krx", choices=["krx", "us"])
    parser.add_argument("--symbols", type=int, default=2500)
    parser.add_argument("--sessions", type=int, default=2500)
    parser.add_argument("--quick", action="store_true", help="250 symbols x 250 sessions")
    parser.add_argument("--only", default="abcdefghij", help="subset of a-j (default all)")
    parser.add_argument("--kis-full", action="store_true", help="(e) at 2,500 symbols, 20/s")
    parser.add_argument("--no-unbatched", action="store_true", help="skip unbatched CLI runs")
    args = parser.parse_args()
    if args.quick:
        args.symbols, args.sessions = 250, 250
    keys = past_keys(args.market, args.sessions)
    info = {"machine": machine(), "market": args.market, "symbols": args.symbols}
    info["sessions"] = [keys[0], keys[-1], len(keys)]
    print(json.dumps(info), flush=True)
    root, rows, history = backfill.scratch(), [], None

    def done(result: dict) -> None:
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        rows.append(result)
        print(json.dumps(result), flush=True)

    try:
        if "a" in args.only or "b" in args.only:
            result, history = backfill.data_work(args.market, args.symbols, keys, root)
            if "a" in args.only:
                done(result)
        if "b" in args.only:
            done(indicators_vs_talib.run(history))
        history = None
        gc.collect()
        if "c" in args.only:
            done(rules_vs_ge.run(rules_vs_ge.frame(args.market, args.symbols, keys)))
            gc.collect()
        if "d" in args.only:
            done(daily(args.market, args.symbols))
        if "e" in args.only:
            done(ingest(*((2500, 20) if args.kis_full else (400, 100))))
        if "f" in args.only:
            done(order_book_session(args.symbols))
            gc.collect()
        if "g" in args.only:
            done(options_chain.run(100_000 if args.quick else options_chain.CONTRACTS))
            gc.collect()
        if "h" in args.only:
            done(trade_ingest(100_000 if args.quick else 1_000_000))
        if "i" in args.only:
            done(
                trades_aggregate.run(
                    1_000_000 if args.quick else trades_aggregate.TRADES_PER_SESSION
                )
            )
            gc.collect()
        if "j" in args.only:
            done(warehouse_load.run(args.symbols, args.sessions, args.market))
            gc.collect()
        if "a" in args.only:
            batches = [backfill.BATCH] + ([] if args.no_unbatched else [None])
            for batch in batches:
                done(backfill.through_dagster(args.market, args.symbols, keys, batch, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    info["machine"]["load_average_end"] = os.getloadavg()
    print("\n" + table(rows))
    out = REPO / "bench" / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({**info, "results": rows}, indent=2, default=str))
    print(f"\nwrote {out.relative_to(REPO)}")
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
