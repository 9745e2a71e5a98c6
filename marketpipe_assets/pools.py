"""The Dagster pool a market's provider steps share."""

import os

from checks.markets import MARKETS


def provider_pool(market: str) -> str:
    """The Dagster pool of the market's first configured source, e.g. `provider_kis`.

    Steps in one pool share its limit across runs (dagster.yaml: one step at a time unless
    `dagster instance concurrency set` says otherwise), so parallel runs split one provider's
    request budget instead of each assuming it has all of it. Read from the same variable as
    MarketDataResource.from_env; a run whose config switches the source keeps the pool.
    """
    spec = os.environ.get(MARKETS[market].source_variable, "synthetic")
    names = [name.strip() for name in spec.split(",") if name.strip()]
    return f"provider_{names[0] if names else 'synthetic'}"
