"""Shared helpers: paths, recent sessions, stage timers and result rows."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def past_keys(market: str, n: int) -> list[str]:
    """The n most recent partition keys before today: ends at the latest past session."""
    from checks.markets import partitions_def

    today = dt.date.today().isoformat()
    return [k for k in partitions_def(market).get_partition_keys() if k < today][-n:]


class Stages:
    """Seconds per named stage, in the order first seen."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, list[float], object]:
    """Best time of `repeat` calls, every time, and the last call's result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), [round(t, 3) for t in times], result


def row(bench: str, target: str, measured: str, ratio: float | None, status: str, **details):
    return {
        "bench": bench,
        "target": target,
        "measured": measured,
        "ratio": None if ratio is None else round(ratio, 3),
        "status": status,
        **details,
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def profile_top(fn: Callable[[], object], n: int = 8) -> dict[str, float]:
    """The n functions with the most own time (seconds) in one profiled call of fn."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    top = sorted(((tt, nc, key) for key, (_, nc, tt, _, _) in stats.items()), reverse=True)[:n]
    return {f"{_label(key)} x{calls}": round(tt, 3) for tt, calls, key in top}


def _label(key: tuple[str, int, str]) -> str:
    file, _, func = key
    return func if file == "~" else f"{Path(file).name}:{func}"
