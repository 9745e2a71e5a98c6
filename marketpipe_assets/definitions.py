"""The one place that assembles marketpipe's Definitions."""

import os

import dagster as dg

from checks.ge_check import ge_asset_check
from resources.lake import LakeResource
from resources.market_data import MarketDataResource

from .automation import landing_file_sensor, market_schedule, price_job
from .book_capture import capture_schedule
from .indicators import indicators_asset
from .intraday import intraday_bars_asset
from .markets import MARKETS
from .options import option_chains_asset
from .order_books import order_books_asset
from .prices import daily_prices_asset, universe_asset

assets = [
    build(market)
    for market in MARKETS
    for build in (
        universe_asset,
        daily_prices_asset,
        indicators_asset,
        intraday_bars_asset,
        order_books_asset,
    )
] + [option_chains_asset()]
jobs = [price_job(market) for market in MARKETS]

defs = dg.Definitions(
    assets=assets,
    asset_checks=[ge_asset_check(m) for m in MARKETS],
    jobs=jobs,
    schedules=[market_schedule(m) for m in MARKETS] + [capture_schedule(m) for m in MARKETS],
    sensors=[landing_file_sensor(market) for market in MARKETS],
    resources={
        "lake": LakeResource(url=os.environ.get("MARKETPIPE_LAKE_URL", "data/lake")),
        "market_data": MarketDataResource.from_env(),
    },
)
