"""`marketpipe collect`: the long-running trade collector of one market.

    marketpipe collect --market us --source finnhub --symbols AAPL,MSFT

Runs until stopped. SIGTERM (or Ctrl-C) stops receiving, flushes the spool to the lake (for up to
--drain-seconds; what is left stays in the spool for the next start) and exits 0. Settings:
MARKETPIPE_LAKE_URL, MARKETPIPE_SPOOL_DIR, MARKETPIPE_SPOOL_RETENTION_DAYS (3),
MARKETPIPE_SPOOL_SYNCHRONOUS (NORMAL), MARKETPIPE_TRADE_FLUSH_SECONDS (5),
MARKETPIPE_TRADE_SESSION_TOLERANCE_MINUTES (5), the provider's credentials and URLs
(FINNHUB_API_KEY, FINNHUB_WS_URL; KIS_APP_KEY, KIS_APP_SECRET, KIS_BASE_URL, KIS_WS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import sys

from marketpipe_assets.markets import MARKETS
from resources.collector.feeds import feed_from_env
from resources.collector.flusher import LOG_FORMAT, FlusherProcess
from resources.collector.formats import FINNHUB, KIS, SYNTHETIC
from resources.collector.runner import Collector
from resources.sources.base import ConfigurationError
from resources.trade_spool import TradeSpool, spool_path

logger = logging.getLogger("marketpipe.collector")
# A feed serves one market: KIS H0STCNT0 is KRX's tape, Finnhub's stock trades here are US.
FEED_MARKETS = {FINNHUB: ("us",), KIS: ("krx",), SYNTHETIC: tuple(MARKETS)}


def _float_env(variable: str, default: float) -> float:
    raw = os.environ.get(variable, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigurationError(f"{variable}={raw!r}: use a number > 0, e.g. {default}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marketpipe collect", description=__doc__.split("\n")[0])
    p.add_argument("--market", required=True, choices=sorted(MARKETS))
    p.add_argument("--source", default=SYNTHETIC, choices=sorted(FEED_MARKETS))
    p.add_argument("--symbols", required=True, help="comma list, e.g. AAPL,MSFT or 005930")
    p.add_argument("--seed", type=int, default=0, help="synthetic source: seed")
    p.add_argument("--rate", type=float, default=1000.0, help="synthetic source: trades/s")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="flush time on SIGTERM")
    return p


async def _collect(collector: Collector, flusher: FlusherProcess) -> bool:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, collector.stop)
    await collector.run()
    logger.info("stopping: flushing the spool to the lake")
    return await asyncio.to_thread(flusher.finish)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    try:
        if not symbols:
            raise ConfigurationError("--symbols: give at least one symbol, e.g. AAPL,MSFT")
        if args.market not in FEED_MARKETS[args.source]:
            raise ConfigurationError(
                f"--source {args.source} serves {', '.join(FEED_MARKETS[args.source])} trades, "
                f"not --market {args.market}"
            )
        feed = feed_from_env(args.source, args.market, symbols, seed=args.seed, rate=args.rate)
        flusher = FlusherProcess(
            spool_path(args.market),
            os.environ.get("MARKETPIPE_LAKE_URL") or "data/lake",
            args.market,
            interval=_float_env("MARKETPIPE_TRADE_FLUSH_SECONDS", 5.0),
            retention_days=_float_env("MARKETPIPE_SPOOL_RETENTION_DAYS", 3.0),
        )
        spool = TradeSpool(spool_path(args.market))
    except ConfigurationError as exc:
        print(f"marketpipe collect: {exc}", file=sys.stderr)
        return 2
    collector = Collector(feed, spool)
    logger.info("collecting %s trades of %s from %s into %s", args.market, ",".join(symbols),
                args.source, spool.path)  # fmt: skip
    flusher.start(args.drain_seconds)
    try:
        empty = asyncio.run(_collect(collector, flusher))
    finally:
        spool.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    collector.stats.seconds["cpu"] = usage.ru_utime + usage.ru_stime
    summary = {
        "receive": vars(collector.stats),
        "flush": flusher.stats,
        "spool_empty": empty,
    }
    logger.info("collector stopped: %s", json.dumps(summary))
    if not empty:
        logger.warning("the lake was not reachable in time: the rest stays in the spool")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
