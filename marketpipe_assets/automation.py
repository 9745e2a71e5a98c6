"""Schedules and sensors: the 18:00 session schedule and the landing-folder file sensor.

Indicators need neither: their declarative automation condition runs them once new prices
have landed and passed their blocking checks.
"""

import datetime as dt
import json
from functools import cache

import dagster as dg

from resources.market_data import MarketDataResource
from resources.sources.files import FilesSource

from .markets import MARKETS, all_sessions, is_session, partitions_def

# Dagster's tags for a single run over a partition range (what the CLI's --partition-range sets).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@cache
def price_job(market: str):
    return dg.define_asset_job(
        f"{market}_daily_prices",
        # The asset with every check of it, as the UI's Materialize runs it: the inline checks,
        # the GE cross-check and symbol freshness, each judging the run's own sessions.
        selection=dg.AssetSelection.assets([market, "daily_prices"]),
        partitions_def=partitions_def(market),
        description=f"Ingest and check {market.upper()} daily prices for one session or a range.",
    )


def market_schedule(market: str) -> dg.ScheduleDefinition:
    spec = MARKETS[market]

    @dg.schedule(
        name=f"{market}_daily_close",
        job=price_job(market),
        cron_schedule="0 18 * * 1-5",
        execution_timezone=spec.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"18:00 {spec.timezone} on {spec.calendar} sessions: ingest that session.",
    )
    def daily_close(context: dg.ScheduleEvaluationContext):
        day = (
            context.scheduled_execution_time.astimezone(dt.UTC)
            .astimezone(_zone(spec.timezone))
            .date()
        )
        if not is_session(market, day):
            return dg.SkipReason(f"{day} is not an {spec.calendar} session (exchange holiday)")
        return dg.RunRequest(run_key=f"{market}-{day}", partition_key=day.isoformat())

    return daily_close


def _zone(name: str):
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def contiguous_blocks(market: str, days: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Group sessions into runs of consecutive exchange sessions: one range run per block."""
    index = {d: i for i, d in enumerate(all_sessions(market))}
    positions = sorted(index[d] for d in set(days) if d in index)
    sessions = all_sessions(market)
    blocks: list[tuple[dt.date, dt.date]] = []
    for pos in positions:
        if blocks and index[blocks[-1][1]] == pos - 1:
            blocks[-1] = (blocks[-1][0], sessions[pos])
        else:
            blocks.append((sessions[pos], sessions[pos]))
    return blocks


def files_run_config(market_data: MarketDataResource, market: str) -> dict:
    """Run config that switches `market` to the files source and keeps every other setting.

    Run config replaces a resource's whole configuration: a field it leaves out falls back to the
    class default, not to the deployment's MARKETPIPE_* value. So the run carries all current
    settings (landing folder, universe files, other market's source) with only this one changed.
    """
    settings = {name: getattr(market_data, name) for name in type(market_data).model_fields}
    settings[f"{market}_source"] = "files"
    return {"resources": {"market_data": {"config": settings}}}


def landing_file_sensor(market: str) -> dg.SensorDefinition:
    job = price_job(market)

    @dg.sensor(
        name=f"{market}_landing_files",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Ingests the sessions of each new or changed file in <landing>/{market}/.",
    )
    def landing_files(context: dg.SensorEvaluationContext, market_data: MarketDataResource):
        files = FilesSource(landing_url=market_data.landing_url)
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        new = [f for f in files.files(market) if seen.get(f["path"]) != f["stamp"]]
        if not new:
            return dg.SkipReason(f"no new files in {market_data.landing_url}/{market}")
        requests = []
        for entry in new:
            path, stamp = entry["path"], entry["stamp"]
            for first, last in contiguous_blocks(market, files.sessions_in_file(market, path)):
                requests.append(
                    dg.RunRequest(
                        run_key=f"{path}@{stamp}#{first}..{last}",
                        run_config=files_run_config(market_data, market),
                        tags={RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()},
                    )
                )
            seen[path] = stamp
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True))

    return landing_files
