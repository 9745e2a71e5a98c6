"""Every dataset marketpipe materializes, declared once: definitions, alerts, freshness,
retention and the demo read this table instead of keeping lists of dataset names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from checks.markets import MARKETS

from .indicators import indicators_asset
from .intraday import intraday_bars_asset
from .options import option_chains_asset
from .order_books import order_books_asset
from .prices import daily_prices_asset, universe_asset
from .trade_aggregates import trade_aggregates_asset
from .trade_hours import TRADES_DATASET


@dataclass(frozen=True)
class Dataset:
    name: str
    # The market's asset (or assets); None for a dataset written outside Dagster.
    build: Callable[[str], dg.AssetsDefinition] | None
    markets: tuple[str, ...] = tuple(MARKETS)
    # Fetched from a source: its runs retry on provider errors, and its successful
    # materializations are what MARKETPIPE_NOTIFY_URL hears about.
    ingested: bool = False
    # Due the morning after each session (a Dagster freshness policy on the asset).
    due_after_session: bool = False
    # Has a partitioned per-symbol freshness check and a job that runs only that check.
    symbol_freshness: bool = False
    # Materialized, with its checks, by `make demo`.
    in_demo: bool = False
    # Captured into the local spool before it is stored: retention ages that spool.
    spooled: bool = False

    def assets(self) -> list[dg.AssetsDefinition]:
        return [] if self.build is None else [self.build(m) for m in self.markets]


DATASETS: tuple[Dataset, ...] = (
    Dataset("universe", universe_asset, ingested=True),
    Dataset(
        "daily_prices",
        daily_prices_asset,
        ingested=True,
        due_after_session=True,
        symbol_freshness=True,
        in_demo=True,
    ),
    Dataset("indicators", indicators_asset, due_after_session=True, in_demo=True),
    Dataset("intraday_bars", intraday_bars_asset, ingested=True, symbol_freshness=True),
    Dataset("order_books", order_books_asset, ingested=True, spooled=True),
    Dataset("option_chains", lambda _: option_chains_asset(), markets=("us",), ingested=True),
    # Trades are written by `marketpipe collect`; their hourly aggregates are assets.
    Dataset(TRADES_DATASET, None, ingested=True),
    Dataset("trade_aggregates", trade_aggregates_asset),
)


def names(**trait: bool) -> tuple[str, ...]:
    """The names of the datasets with a trait, e.g. names(ingested=True)."""
    [(field, wanted)] = trait.items()
    return tuple(d.name for d in DATASETS if getattr(d, field) == wanted)
