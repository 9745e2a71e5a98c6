"""The providers, in one table: each names its source class, whose `market` and `datasets` say
what it serves, and the factory that builds it from the environment (CONTRACT section 4;
credentials never pass through Dagster config).

Adding a provider: its module (a OneMarketDailyBars subclass declaring `market` and `datasets`,
and `source_from_env`), one entry here, one fake server and fixture in
tests/providers/test_contract.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from resources.sources.base import Dataset

from . import finnhub, kis, krx, twelvedata, yahoo
from .base import OneMarketDailyBars


@dataclass(frozen=True)
class Provider:
    name: str
    source: type[OneMarketDailyBars]
    from_env: Callable[[], OneMarketDailyBars]

    @property
    def markets(self) -> tuple[str, ...]:
        return (self.source.market,)

    @property
    def datasets(self) -> frozenset[Dataset]:
        return self.source.datasets


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("kis", kis.KisSource, kis.source_from_env),
        Provider("krx", krx.KrxSource, krx.source_from_env),
        Provider("twelvedata", twelvedata.TwelveDataSource, twelvedata.source_from_env),
        Provider("finnhub", finnhub.FinnhubSource, finnhub.source_from_env),
        Provider("yahoo", yahoo.YahooSource, yahoo.source_from_env),
    )
}
