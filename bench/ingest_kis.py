"""KIS ingestion throughput: one session for N symbols through KisSource.daily_bars.

`run(symbols=2500, rate=20, latency=(0.03, 0.08))` starts the fake KIS server (in its own
process, so its threads do not share the client's interpreter lock) with that latency and times
one session's bars for N symbols at the given rate limit. The floor is symbols / rate seconds;
the target is >= 95% of the limit in requests per second. It then measures the client's own
overhead with the limit out of the way (100000/s) and no latency: requests per second on loopback
and client CPU per request.

    python -m bench.ingest_kis [--symbols N --rate R --latency 0.03,0.08]   # prints a JSON line
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import tempfile
import time

TARGET_RATIO = 0.95
UNLIMITED = 100_000
_KEY, _SECRET = "bench-app-key", "bench-app-secret"


def _serve(conn, latency: tuple[float, float]) -> None:
    from checks.markets import all_sessions
    from tests.fakes.kis import DAILY, FakeKis

    all_sessions("krx")  # load the calendar before the clock starts
    with FakeKis(_KEY, _SECRET, latency=latency) as fake:
        conn.send(fake.url)
        conn.recv()  # until the client is done
        conn.send(fake.count(DAILY))


def _last_session() -> dt.date:
    from checks.markets import all_sessions

    today = dt.date.today()
    return max(d for d in all_sessions("krx") if d < today)


def _ingest(symbols: int, rate: int, latency: tuple[float, float]) -> dict:
    from resources.providers.kis import KisSource

    codes = [f"{i:06d}" for i in range(1, symbols + 1)]
    day = _last_session()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=_serve, args=(theirs, latency), daemon=True)
    server.start()
    try:
        url = ours.recv()
        with tempfile.TemporaryDirectory() as cache:
            source = KisSource(_KEY, _SECRET, url, rate=(rate, 1.0), cache_dir=cache)
            cpu, started = time.process_time(), time.perf_counter()
            bars = source.daily_bars("krx", [day], codes)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
        ours.send("done")
        requests = ours.recv()
    finally:
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()
    return {
        "symbols": symbols,
        "rows": bars.height,
        "requests": requests,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(requests / elapsed, 1),
        "client_cpu_ms_per_request": round(1000 * cpu / max(requests, 1), 3),
    }


def run(symbols: int = 2500, rate: int = 20, latency: tuple[float, float] = (0.03, 0.08)) -> dict:
    """Throughput at the rate limit against a server with `latency`, and the client's overhead."""
    limited = _ingest(symbols, rate, latency)
    overhead = _ingest(symbols, UNLIMITED, (0.0, 0.0))
    ratio = limited["requests_per_s"] / rate
    return {
        "bench": "ingest_kis",
        "rate_limit_per_s": rate,
        "latency_s": list(latency),
        "floor_s": round(symbols / rate, 3),
        **limited,
        "ratio_to_limit": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "status": "pass" if ratio >= TARGET_RATIO and limited["rows"] == symbols else "fail",
        "unlimited": overhead,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=2500)
    parser.add_argument("--rate", type=int, default=20, help="requests per second")
    parser.add_argument("--latency", default="0.03,0.08", help="LOW,HIGH seconds per answer")
    args = parser.parse_args(argv)
    low, high = (float(x) for x in args.latency.split(","))
    print(json.dumps(run(args.symbols, args.rate, (low, high))))


if __name__ == "__main__":
    main()
