"""The one place that assembles marketpipe's Definitions."""

import os

import dagster as dg

from checks.markets import MARKETS
from marketpipe_assets.ge_check import ge_asset_check
from resources.lake import LakeResource
from resources.market_data import MarketDataResource

from .alerting import alert_sensors
from .automation import landing_file_sensor, market_schedule, price_job, rejected_file_job
from .book_capture import capture_schedule
from .datasets import DATASETS, names
from .declarative import automation_sensor
from .freshness import freshness_checks, freshness_job, freshness_schedules, with_freshness
from .retention import retention_job, retention_schedule
from .trade_sensors import trade_jobs, trade_sensors
from .warehouse import warehouse_assets, warehouse_resources

# The warehouse assets exist only when MARKETPIPE_WAREHOUSE_URL is set.
assets = with_freshness([a for d in DATASETS for a in d.assets()]) + warehouse_assets()
jobs = [
    *(price_job(m) for m in MARKETS),
    *(rejected_file_job(m) for m in MARKETS),
    *(freshness_job(m, d) for m in MARKETS for d in names(symbol_freshness=True)),
    retention_job,
    *trade_jobs(),
]

defs = dg.Definitions(
    assets=assets,
    asset_checks=[
        *(ge_asset_check(m) for m in MARKETS),
        *(check for m in MARKETS for check in freshness_checks(m)),
    ],
    jobs=jobs,
    schedules=[
        *(market_schedule(m) for m in MARKETS),
        *(capture_schedule(m) for m in MARKETS),
        *(s for m in MARKETS for s in freshness_schedules(m)),
        retention_schedule,
    ],
    sensors=[
        *(landing_file_sensor(m) for m in MARKETS),
        *alert_sensors(),
        *trade_sensors(),
        automation_sensor,
    ],
    resources={
        "lake": LakeResource(url=os.environ.get("MARKETPIPE_LAKE_URL", "data/lake")),
        "market_data": MarketDataResource.from_env(),
        **warehouse_resources(),
    },
)
