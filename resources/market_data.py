"""The market-data resource: which source serves each market, and each market's universe."""

from __future__ import annotations

import os

import dagster as dg
import fsspec
import polars as pl

from checks.errors import ConfigurationError
from checks.markets import MARKETS
from checks.schemas import UNIVERSE, conform

from .providers.registry import PROVIDERS
from .sources.base import FallbackSource, Source, SourceError
from .sources.files import FilesSource, read_table_file
from .sources.synthetic import SyntheticSource


class MarketDataResource(dg.ConfigurableResource):
    """Sources per market (a comma list is a fallback chain) and the settings they need."""

    krx_source: str = "synthetic"
    us_source: str = "synthetic"
    krx_universe: str | None = None
    us_universe: str | None = None
    landing_url: str = "data/landing"
    synthetic_symbols: int = 500
    synthetic_seed: int = 0
    synthetic_missing_rate: float = 0.01
    synthetic_bad_row_rate: float = 0.002
    option_underlyings: str = "SPY,QQQ,AAPL"  # comma list for us/option_chains

    @classmethod
    def from_env(cls) -> MarketDataResource:
        env = os.environ

        def number(var: str, kind, default):
            raw = env.get(var)
            try:
                return default if raw in (None, "") else kind(raw)
            except ValueError as exc:
                raise ConfigurationError(
                    f"{var}={raw!r} is not a valid {kind.__name__}; set it to a number "
                    f"such as {default}, or unset it for the default ({default})."
                ) from exc

        resource = cls(
            krx_source=env.get("MARKETPIPE_KRX_SOURCE", "synthetic"),
            us_source=env.get("MARKETPIPE_US_SOURCE", "synthetic"),
            krx_universe=env.get("MARKETPIPE_KRX_UNIVERSE") or None,
            us_universe=env.get("MARKETPIPE_US_UNIVERSE") or None,
            landing_url=env.get("MARKETPIPE_LANDING_URL", "data/landing"),
            synthetic_symbols=number("MARKETPIPE_SYNTHETIC_SYMBOLS", int, 500),
            synthetic_seed=number("MARKETPIPE_SYNTHETIC_SEED", int, 0),
            synthetic_missing_rate=number("MARKETPIPE_SYNTHETIC_MISSING_RATE", float, 0.01),
            synthetic_bad_row_rate=number("MARKETPIPE_SYNTHETIC_BAD_ROW_RATE", float, 0.002),
            option_underlyings=env.get("MARKETPIPE_OPTION_UNDERLYINGS") or "SPY,QQQ,AAPL",
        )
        # An unknown source name fails when the definitions load, not in the first run.
        for market in MARKETS:
            resource._source_names(market)
        return resource

    def _factories(self) -> dict:
        return {
            "synthetic": lambda: SyntheticSource(
                symbols=self.synthetic_symbols,
                seed=self.synthetic_seed,
                missing_rate=self.synthetic_missing_rate,
                bad_row_rate=self.synthetic_bad_row_rate,
            ),
            "files": lambda: FilesSource(landing_url=self.landing_url),
            # Each provider builds its source from its own environment variables (credentials
            # never pass through Dagster config, so they never show in the UI or run records).
            **{name: provider.from_env for name, provider in PROVIDERS.items()},
        }

    def _source_names(self, market: str) -> list[str]:
        """The market's source names in chain order; unknown names are a ConfigurationError."""
        spec = getattr(self, f"{market}_source")
        names = [n.strip() for n in spec.split(",") if n.strip()]
        factories = self._factories()
        unknown = [n for n in names if n not in factories]
        if unknown or not names:
            raise ConfigurationError(
                f"{MARKETS[market].source_variable}={spec!r}: "
                f"unknown source(s) {unknown or [spec]}; use one of {sorted(factories)} "
                "or a comma list of them for a fallback chain."
            )
        return names

    def underlyings(self) -> list[str]:
        return [u.strip().upper() for u in self.option_underlyings.split(",") if u.strip()]

    def source(self, market: str) -> Source:
        factories = self._factories()
        sources = [factories[n]() for n in self._source_names(market)]
        return sources[0] if len(sources) == 1 else FallbackSource(sources)

    def universe(self, market: str) -> pl.DataFrame:
        """The market's listing: the override file when configured, else the source's own."""
        override = getattr(self, f"{market}_universe")
        if not override:
            return conform(self.source(market).universe(market), UNIVERSE, what="universe")
        variable = MARKETS[market].universe_variable
        try:
            fs, path = fsspec.core.url_to_fs(override)
            frame = read_table_file(fs, path, what=variable)
            return conform(frame, UNIVERSE, what=f"{variable}={override!r}")
        except (SourceError, ValueError, OSError) as exc:
            raise ConfigurationError(f"{variable}={override!r}: {exc}") from exc
