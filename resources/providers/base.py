"""What every provider source shares: settings from the environment, the sync bridge and
bounded concurrent fetching of many symbols."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import polars as pl

from resources.sources.base import ConfigurationError

from .errors import NotFound

T = TypeVar("T")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute)\s*$")


def rate_limit(variable: str, default: str) -> tuple[int, float]:
    """Parse `N/s` or `N/min` from the environment, e.g. MARKETPIPE_KIS_RATE_LIMIT=20/s."""
    raw = os.environ.get(variable, default)
    match = _RATE.match(raw)
    if not match or int(match.group(1)) < 1:
        raise ConfigurationError(f"{variable}={raw!r}: use 'N/s' or 'N/min', e.g. {default!r}")
    return int(match.group(1)), 1.0 if match.group(2).startswith("s") else 60.0


def required_env(variable: str, provider: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ConfigurationError(f"{variable} is not set: the {provider} source needs it")
    return value


def credential_id(*parts: str | None) -> str:
    """A stable, non-reversible id of a credential, to key limiters and token caches."""
    return hashlib.sha256("\0".join(p or "" for p in parts).encode()).hexdigest()[:16]


def run_sync(coroutine: Awaitable[T]) -> T:
    """Run a coroutine from Dagster's synchronous step, even if a loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def fetch_each(
    symbols: Sequence[str],
    fetch: Callable[[str], Awaitable[pl.DataFrame]],
    *,
    concurrency: int,
) -> tuple[list[pl.DataFrame], dict[str, str]]:
    """fetch(symbol) for every symbol, at most `concurrency` in flight.

    An unknown symbol or a symbol with no data is recorded in the returned `missing` map (the
    completeness check then counts it); any other error propagates.
    """
    gate = asyncio.Semaphore(concurrency)
    missing: dict[str, str] = {}

    async def one(symbol: str) -> pl.DataFrame | None:
        async with gate:
            try:
                return await fetch(symbol)
            except NotFound as error:
                missing[symbol] = error.detail
                return None

    frames = await asyncio.gather(*(one(s) for s in symbols))
    return [f for f in frames if f is not None], missing
