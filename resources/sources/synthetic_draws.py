"""The hashed random draws every synthetic dataset is built from: each number a pure function of
(seed, market, stream, symbol, session or slot), so a value never depends on what is generated
with it."""

from __future__ import annotations

import numpy as np

_MARKET_IDS = {"krx": 1, "us": 2}
_LOW32 = np.uint64(0xFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread 64-bit hash of each element."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def hashes(seed: int, market: str, stream: int, symbols: np.ndarray, sessions: np.ndarray):
    """64-bit hashes of shape (len(symbols), len(sessions)), a pure function of the key."""
    with np.errstate(over="ignore"):
        key = np.uint64(seed) * np.uint64(1_000_003) + np.uint64(_MARKET_IDS[market] * 64 + stream)
        sym = _mix(key ^ (symbols.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
        return _mix(
            sym[:, None] + sessions.astype(np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03)
        )


def uniform_pair(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent U(0,1) draws from the two halves of each hash."""
    scale = 1.0 / 2**32
    return ((h >> np.uint64(32)).astype(np.uint32) + 0.5) * scale, (
        (h & _LOW32).astype(np.uint32) + 0.5
    ) * scale


def uniforms(*key) -> np.ndarray:
    return uniform_pair(hashes(*key))[0]


def shocks(u: np.ndarray) -> np.ndarray:
    """Unit-variance logistic draws: bell-shaped with the fatter tails real returns have, and
    an order of magnitude cheaper than the normal quantile."""
    return np.log(u / (1.0 - u)) * (np.sqrt(3.0) / np.pi)
