"""Schedules and sensors: the 18:00 session schedule and the landing-folder file sensor.

Indicators need neither: their declarative automation condition runs them once new prices
have landed and passed their blocking checks.
"""

import datetime as dt
import json
from functools import cache

import dagster as dg

from checks.markets import MARKETS, all_sessions, is_session, partitions_def
from resources.market_data import MarketDataResource
from resources.sources.base import SourceError
from resources.sources.files import FilesSource
from resources.sources.landing_files import rejected_file

# Dagster's tags for a single run over a partition range (what the CLI's --partition-range sets).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# On every run the landing sensor requests: the file's name in <landing>/<market>/.
LANDING_FILE_TAG = "marketpipe/landing_file"


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


class RejectedLandingFile(dg.Config):
    file: str  # its name in <landing>/<market>/
    problem: str  # what is wrong and what to do, in words a user can act on


@dg.op(description="Fails with what is wrong with a landing file and how to get it ingested.")
def reject_landing_file(config: RejectedLandingFile) -> None:
    raise dg.Failure(description=config.problem, metadata={"file": config.file})


@cache
def rejected_file_job(market: str) -> dg.JobDefinition:
    @dg.job(
        name=f"{market}_landing_file_rejected",
        description=f"One failed run per unusable file in <landing>/{market}/, saying why.",
    )
    def landing_file_rejected():
        reject_landing_file()

    return landing_file_rejected


def _file_states(cursor: str | None, present: list[dict]) -> dict[str, dict]:
    """The cursor: per file name its mtime, size and status (requested or rejected), for the
    files still in the folder (one removed and dropped again is new). A cursor of the earlier
    form (full path -> mtime) is read as requested files of unknown size."""
    states = json.loads(cursor) if cursor else {}
    names = {e["path"]: e["name"] for e in present} | {e["name"]: e["name"] for e in present}
    return {
        names[key]: state
        if isinstance(state, dict)
        else {"mtime": state, "size": None, "status": "requested"}
        for key, state in states.items()
        if key in names
    }


def _unchanged(state: dict | None, entry: dict) -> bool:
    return (
        state is not None
        and state["mtime"] == entry["stamp"]
        and state["size"] in (None, entry["size"])
    )


def landing_file_sensor(market: str) -> dg.SensorDefinition:
    job = price_job(market)
    rejected_job = rejected_file_job(market)

    @dg.sensor(
        name=f"{market}_landing_files",
        jobs=[job, rejected_job],
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Ingests the sessions of each new or changed file in <landing>/{market}/; "
        "an unusable file gets one failed run saying why, and blocks no other file.",
    )
    def landing_files(context: dg.SensorEvaluationContext, market_data: MarketDataResource):
        files = FilesSource(landing_url=market_data.landing_url)
        folder = f"{market_data.landing_url.rstrip('/')}/{market}"
        present = files.files(market)
        states = _file_states(context.cursor, present)
        requests = []
        for entry in present:
            name = entry["name"]
            if _unchanged(states.get(name), entry):
                continue
            state = {"mtime": entry["stamp"], "size": entry["size"]}
            try:
                blocks = contiguous_blocks(market, files.sessions_in_file(market, entry["path"]))
                if not blocks:
                    raise rejected_file(entry["path"], _no_sessions(market))
            except Exception as exc:
                # Whatever a file holds, it must not stop the sensor from serving the others.
                problem = exc if isinstance(exc, SourceError) else _unforeseen(entry, exc)
                requests.append(_rejection(rejected_job, entry, str(problem)))
                states[name] = {**state, "status": "rejected"}
                continue
            for first, last in blocks:
                requests.append(
                    dg.RunRequest(
                        job_name=job.name,
                        run_key=f"{entry['path']}@{entry['stamp']}#{first}..{last}",
                        run_config=files_run_config(market_data, market),
                        tags={
                            RANGE_START_TAG: first.isoformat(),
                            RANGE_END_TAG: last.isoformat(),
                            LANDING_FILE_TAG: name,
                        },
                    )
                )
            states[name] = {**state, "status": "requested"}
        cursor = json.dumps(states, sort_keys=True)
        if not requests:
            return dg.SensorResult(skip_reason=f"no new files in {folder}", cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return landing_files


def _rejection(job: dg.JobDefinition, entry: dict, problem: str) -> dg.RunRequest:
    name = entry["name"]
    return dg.RunRequest(
        job_name=job.name,
        # Another version of the file (rewritten: new mtime) is another run.
        run_key=f"{name}:{entry['stamp']}",
        run_config={"ops": {"reject_landing_file": {"config": {"file": name, "problem": problem}}}},
        tags={LANDING_FILE_TAG: name},
    )


def _unforeseen(entry: dict, exc: Exception) -> SourceError:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return rejected_file(
        entry["path"], f"the file could not be read ({type(exc).__name__}: {first_line})"
    )


def _no_sessions(market: str) -> str:
    return (
        f"none of its trade dates is an {MARKETS[market].calendar} session from "
        f"{all_sessions(market)[0]} on (weekends, holidays and dates before "
        "MARKETPIPE_START_DATE are not)"
    )
