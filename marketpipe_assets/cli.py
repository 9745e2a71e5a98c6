"""The `marketpipe` console script.

    marketpipe collect --market us --source finnhub --symbols AAPL,MSFT   (see collect.py)
    marketpipe query transactions-hourly --market us [--now 2026-11-20T15:30:00Z]
    marketpipe query volumes-hourly | hourly-stats --market us
    marketpipe query transactions-minutes AAPL --n 10 --market us
    marketpipe query top-volume --n 5 --market us
    marketpipe query price AAPL --market us

Query answers are JSON on stdout (hours as ISO datetimes in UTC), read from MARKETPIPE_LAKE_URL
and the spool under MARKETPIPE_SPOOL_DIR; problems go to stderr with a non-zero exit code.
"""

import argparse
import datetime as dt
import json
import os
import sys

from checks.markets import MARKETS

# Each report and what it answers, in the words `marketpipe query --help` shows.
QUERIES = {
    "transactions-hourly": "trades per stock in each of the last 6 closed hours",
    "volumes-hourly": "volume per stock in each of the last 6 closed hours",
    "hourly-stats": "total trades and volume of each of the last 12 closed hours, and the "
    "session hours without any trade (missing_hours)",
    "transactions-minutes": "trades of one stock in each of the last N minutes (the current "
    "minute excluded)",
    "top-volume": "the N stocks with the highest volume in the last 60 minutes up to now",
    "price": "a stock's latest price: the volume-weighted average price of its latest minute "
    "with trades (up to 7 days back)",
}
DESCRIPTION = """marketpipe's own commands: collect live trades into the lake, and answer trade
reports from what was collected. Daily prices, indicators and the other datasets are Dagster
assets: materialize them with `dagster asset materialize -m marketpipe_assets.definitions` or
`make ui`."""


def _now(raw: str | None) -> dt.datetime:
    if raw is None:
        return dt.datetime.now(dt.UTC)
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--now {raw!r} is not an ISO datetime, e.g. 2026-11-20T15:30:00Z"
        ) from exc
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketpipe", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Parsed by collect.py itself (main below hands it the arguments); listed here for --help.
    commands.add_parser(
        "collect",
        help="collect one market's live trades into the spool and the lake until stopped "
        "(`marketpipe collect --help` for its options)",
    )
    query = commands.add_parser(
        "query",
        help="trade reports from the collected trades, as JSON on stdout",
        description="Trade reports from the collected trades (the lake's trades and hourly "
        "aggregates plus the collector's unflushed spool), as JSON on stdout. Times are UTC.",
    )
    reports = query.add_subparsers(dest="report", required=True, metavar="REPORT")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--market", choices=sorted(MARKETS), required=True, help="the market whose trades to read"
    )
    common.add_argument(
        "--now",
        type=_now,
        default=None,
        metavar="ISO-DATETIME",
        help="answer as of this moment, e.g. 2026-11-20T15:30:00Z (UTC unless it carries an "
        "offset; trades after it are never counted); default: the current time",
    )
    for name, what in QUERIES.items():
        report = reports.add_parser(name, parents=[common], help=what, description=what + ".")
        if name in ("transactions-minutes", "price"):
            report.add_argument("symbol", help="the stock's symbol, e.g. AAPL or 005930")
        if name == "transactions-minutes":
            report.add_argument("--n", type=int, default=10, help="how many minutes (default 10)")
        if name == "top-volume":
            report.add_argument("--n", type=int, default=5, help="how many stocks (default 5)")
    return parser


def run_query(args: argparse.Namespace) -> dict:
    from resources.lake import LakeResource

    from . import trade_queries as q

    lake = LakeResource(url=os.environ.get("MARKETPIPE_LAKE_URL", "data/lake"))
    market, now = args.market, args.now or dt.datetime.now(dt.UTC)
    match args.report:
        case "transactions-hourly":
            return q.transactions_hourly(lake, market, now)
        case "volumes-hourly":
            return q.volumes_hourly(lake, market, now)
        case "hourly-stats":
            return q.hourly_stats(lake, market, now)
        case "transactions-minutes":
            return q.transactions_minutes(lake, market, args.symbol, args.n, now)
        case "top-volume":
            return q.top_volume(lake, market, args.n, now)
        case "price":
            return q.latest_price(lake, market, args.symbol, now)
    raise AssertionError(args.report)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["collect"]:
        from .collect import main as collect  # the collector's own options and help

        return collect(argv[1:])
    args = _parser().parse_args(argv)
    try:
        answer = run_query(args)
    except ValueError as exc:
        print(f"marketpipe query {args.report}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2))
    if args.report == "price" and answer["latest_price"] is None:
        print(
            f"marketpipe query price: no {args.market} trade of {args.symbol} in the lake or the "
            "spool in the last 7 days",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
