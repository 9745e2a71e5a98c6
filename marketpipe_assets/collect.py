"""`marketpipe collect`: the long-running trade collector of one market.

    marketpipe collect --market us --source finnhub --symbols AAPL,MSFT

Runs until stopped; logs go to stderr: the connection's state (connecting, connected,
subscribed, reconnecting and why), every --progress-seconds the counts so far (received,
committed to the spool, flushed to the lake, quarantined), and a summary on exit. SIGTERM (or
Ctrl-C) stops receiving, flushes the spool to the lake (for up to --drain-seconds; what is left
stays in the spool for the next start) and exits 0.
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
import time

from checks.errors import ConfigurationError
from checks.markets import MARKETS
from resources.collector.feeds import feed_from_env
from resources.collector.flusher import LOG_FORMAT, FlusherProcess
from resources.collector.formats import FINNHUB, KIS, SYNTHETIC
from resources.collector.runner import Collector
from resources.trade_spool import TradeSpool, spool_path

logger = logging.getLogger("marketpipe.collector")
SETTINGS = """settings (environment variables):
  MARKETPIPE_LAKE_URL, MARKETPIPE_SPOOL_DIR        where trades go (data/lake, data/spool)
  MARKETPIPE_TRADE_FLUSH_SECONDS (5)               how often the spool is flushed to the lake
  MARKETPIPE_SPOOL_RETENTION_DAYS (3)              flushed rows older than this are pruned
  MARKETPIPE_SPOOL_SYNCHRONOUS (NORMAL)            FULL also survives a power loss
  MARKETPIPE_TRADE_SESSION_TOLERANCE_MINUTES (5)   trades this far outside a session are kept
  FINNHUB_API_KEY, FINNHUB_WS_URL                  --source finnhub
  KIS_APP_KEY, KIS_APP_SECRET, KIS_BASE_URL, KIS_WS_URL   --source kis"""
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


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{raw!r}: give a number of seconds >= 0, e.g. 10")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="marketpipe collect",
        description=__doc__.split("\n\n", 2)[2],
        epilog=SETTINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--market",
        required=True,
        choices=sorted(MARKETS),
        help="the market whose trades to collect",
    )
    p.add_argument(
        "--source",
        default=SYNTHETIC,
        choices=sorted(FEED_MARKETS),
        help="where trades come from: finnhub (us), kis (krx) or synthetic, a deterministic "
        "local stream for any market (default)",
    )
    p.add_argument(
        "--symbols", required=True, help="comma list of symbols, e.g. AAPL,MSFT or 005930"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="synthetic source only: seed of its trades (default 0)",
    )
    p.add_argument(
        "--rate",
        type=float,
        metavar="PER_SECOND",
        default=1000.0,
        help="synthetic source only: trades per second (default 1000)",
    )
    p.add_argument(
        "--drain-seconds",
        type=_seconds,
        metavar="SECONDS",
        default=30.0,
        help="on SIGTERM or Ctrl-C, how long to keep flushing the spool to the lake before "
        "exiting; the rest waits in the spool for the next start (default 30)",
    )
    p.add_argument(
        "--progress-seconds",
        type=_seconds,
        metavar="SECONDS",
        default=10.0,
        help="how often to log the counts received, committed, flushed and quarantined "
        "(default 10; 0: only the summary on exit)",
    )
    return p


def _counts(collector: Collector, flushed: dict) -> str:
    """The four counts of the progress lines and the summary, from this start on."""
    received = collector.stats
    replayed = f" ({received.replayed:,} already in the spool)" if received.replayed else ""
    return (
        f"received {received.rows:,}, committed {received.stored:,}{replayed}, "
        f"flushed {flushed.get('trades', 0):,}, quarantined {flushed.get('quarantined', 0):,}"
    )


async def _report_progress(
    collector: Collector, flusher: FlusherProcess, spool: TradeSpool, every: float
) -> None:
    while True:
        await asyncio.sleep(every)
        counts = _counts(collector, flusher.progress)
        logger.info("%s %s: %s; %s waiting in the spool", collector.feed.source, collector.state,
                    counts, f"{spool.backlog():,}")  # fmt: skip


async def _collect(
    collector: Collector, flusher: FlusherProcess, spool: TradeSpool, args: argparse.Namespace
) -> bool:
    loop = asyncio.get_running_loop()

    def stop(sig: signal.Signals) -> None:
        logger.info("%s received: stopping", sig.name)
        collector.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    every = args.progress_seconds
    reporter = every and asyncio.create_task(_report_progress(collector, flusher, spool, every))
    try:
        await collector.run()
    finally:
        if reporter:
            reporter.cancel()
    logger.info("flushing the spool to the lake (for up to %s s)", args.drain_seconds)
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
    started = time.monotonic()
    flusher.start(args.drain_seconds)
    try:
        empty = asyncio.run(_collect(collector, flusher, spool, args))
        waiting = spool.backlog()
    finally:
        spool.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    collector.stats.seconds["cpu"] = usage.ru_utime + usage.ru_stime
    details = {"receive": vars(collector.stats), "flush": flusher.stats, "spool_empty": empty}
    logger.info("collector stopped: %s", json.dumps(details))  # every figure, for scripts
    left = f"{waiting:,} rows wait in the spool" if waiting else "the spool is empty"
    logger.info("summary after %.1f s over %d connection(s): %s; %s", time.monotonic() - started,
                collector.stats.connections, _counts(collector, flusher.stats), left)  # fmt: skip
    if waiting:
        logger.warning("the lake was not written in time: the rest is flushed on the next start")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
