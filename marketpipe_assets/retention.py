"""Retention: a daily cleanup of the lake's quarantine and of the collector's spool.

What goes, and only this:
- quarantine partitions `<lake>/quarantine/<dataset>/market=<m>/date=<D>/` whose session D is
  older than MARKETPIPE_QUARANTINE_RETENTION_DAYS (30): rejected rows are kept longer than the
  transient capture, shorter than the data itself;
- capture files and folders under `<spool>/order_books/` whose date is older than
  MARKETPIPE_SPOOL_RETENTION_DAYS (3);
- rejected batches `<lake>/_rejected/<dataset>/market=<m>/<UTC time>-<run id>/` rejected longer
  ago than the quarantine's retention, and staged batches (`<lake>/_staging/`) and hidden `.tmp`
  files abandoned more than a day ago by runs that died before publishing (LakeResource.
  sweep_staging: a batch whose publish journal exists is finished by the next recovery, never
  swept).
The trade spool (`<spool>/trades/<market>.sqlite`) is not touched: it is one live database whose
unflushed rows may be the only copy of trades, and the collector prunes its own flushed rows
after the same number of days (resources/trade_spool.py).
Stored partitions (`<lake>/<dataset>/...`), the universe, the failure log and anything else in the
spool are never listed, so never deleted.

Ages come from the date in the path, not from file times. For quarantine that date is the session
the rows belong to: copies, restores and S3 (whose only time is the last PUT) change file times,
the session never changes. One consequence: quarantine written today by a backfill of sessions
older than the retention is removed by the next cleanup; keep it longer with the variable above.
Spool files are dated by their path (`date=YYYY-MM-DD` folders or `...YYYY-MM-DD...` names), and by
their modification time only when the path has no date. "Older than N days" means
date < today - N (UTC): a date exactly N days back is kept. A spool session folder
`<dataset>/market=<m>/date=<D>` whose lake partition `<lake>/<dataset>/market=<m>/date=<D>` does
not exist yet is kept whatever its age: the spool is the only copy of what was not ingested.
"""

import datetime as dt
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
import fsspec

from resources.book_spool import spool_dir
from resources.lake import LakeResource
from resources.publishing import REJECTED

from .datasets import names
from .freshness import evaluation_time

QUARANTINE_DAYS_VARIABLE = "MARKETPIPE_QUARANTINE_RETENTION_DAYS"
SPOOL_DAYS_VARIABLE = "MARKETPIPE_SPOOL_RETENTION_DAYS"
DEFAULT_QUARANTINE_DAYS = 30
DEFAULT_SPOOL_DAYS = 3
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_REJECTED_NAME = re.compile(r"^\d{8}T\d{6}Z-")
_LISTED = 200  # deleted paths named in the run's metadata


@dataclass(frozen=True)
class Expired:
    path: str
    day: dt.date
    size: int


def retention_days(variable: str, default: int) -> int:
    raw = os.environ.get(variable, "").strip()
    try:
        days = int(raw) if raw else default
    except ValueError:
        days = -1
    if days < 0:
        raise ValueError(f"{variable}={raw!r} must be a whole number of days >= 0")
    return days


def _path_date(name: str) -> dt.date | None:
    found = _DATE.findall(name)
    try:
        return dt.date.fromisoformat(found[-1]) if found else None
    except ValueError:  # 2026-13-45 is not a date: treat the name as undated
        return None


def _modified(info: dict) -> dt.date | None:
    """A file's modification date (UTC) from fsspec's details, local or S3."""
    moment = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(moment, dt.datetime):
        return moment.astimezone(dt.UTC).date()
    return dt.datetime.fromtimestamp(float(moment), dt.UTC).date() if moment else None


def _files(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, dict]:
    try:
        return fs.find(folder, withdirs=False, detail=True)
    except FileNotFoundError:
        return {}


def _group(units: Mapping[str, list], cutoff: dt.date) -> list[Expired]:
    """`units`: path -> [session or None, bytes]."""
    return sorted(
        (Expired(path, day, size) for path, (day, size) in units.items() if day and day < cutoff),
        key=lambda e: e.path,
    )


def expired_quarantine(lake: LakeResource, cutoff: dt.date) -> list[Expired]:
    """Quarantine partition folders whose session is before `cutoff`."""
    root = f"{lake.root}/quarantine"
    units: dict[str, list] = defaultdict(lambda: [None, 0])
    for path, info in _files(lake.fs, root).items():
        parts = path[len(root) + 1 :].split("/")
        # Exactly <dataset>/market=<m>/date=<D>/...: any other shape is not a quarantine partition.
        if len(parts) < 4 or not parts[1].startswith("market=") or not parts[2].startswith("date="):
            continue
        unit = units[f"{root}/{'/'.join(parts[:3])}"]
        unit[0] = _path_date(parts[2][len("date=") :])
        unit[1] += int(info.get("size") or 0)
    return _group(units, cutoff)


def expired_rejected(lake: LakeResource, cutoff: dt.date) -> list[Expired]:
    """Rejected batch folders (named `<UTC time>-<run id>`) rejected before `cutoff`."""
    root = f"{lake.root}/{REJECTED}"
    units: dict[str, list] = defaultdict(lambda: [None, 0])
    for path, info in _files(lake.fs, root).items():
        parts = path[len(root) + 1 :].split("/")
        batch = next((i for i, part in enumerate(parts) if _REJECTED_NAME.match(part)), None)
        if batch is None:
            continue
        unit = units[f"{root}/{'/'.join(parts[: batch + 1])}"]
        unit[0] = dt.date.fromisoformat(parts[batch][:8])  # YYYYMMDD parses as ISO basic
        unit[1] += int(info.get("size") or 0)
    return _group(units, cutoff)


def expired_spool(
    folder: str, cutoff: dt.date, lake: LakeResource
) -> tuple[fsspec.AbstractFileSystem, list[Expired], list[Expired]]:
    """Spool files or dated folders (the first dated part of a path) from before `cutoff`:
    (filesystem, to delete, kept because their session is not in the lake yet)."""
    fs, root = fsspec.core.url_to_fs(folder)
    root = root.rstrip("/")
    units: dict[str, list] = defaultdict(lambda: [None, 0])
    pending: set[str] = set()
    # The capture folders of the spool; anything else there (a cursor, a lock) is not ours.
    for dataset in names(spooled=True):
        base = f"{root}/{dataset}"
        stored: dict[str, set[dt.date]] = {}
        for path, info in _files(fs, base).items():
            parts = path[len(base) + 1 :].split("/")
            dated = next((i for i, part in enumerate(parts) if _path_date(part)), None)
            if dated is None:
                unit, day = path, _modified(info)
            else:
                unit, day = f"{base}/{'/'.join(parts[: dated + 1])}", _path_date(parts[dated])
                if len(parts) > 2 and parts[0].startswith("market=") and dated == 1:
                    market = parts[0][len("market=") :]
                    if market not in stored:
                        stored[market] = lake.existing_days(dataset, market)
                    if day not in stored[market]:
                        pending.add(unit)
            units[unit][0] = day
            units[unit][1] += int(info.get("size") or 0)
    expired = _group(units, cutoff)
    return (
        fs,
        [e for e in expired if e.path not in pending],
        [e for e in expired if e.path in pending],
    )


class RetentionConfig(dg.Config):
    dry_run: bool = False  # list what would be deleted, delete nothing
    quarantine_days: int | None = None  # default: MARKETPIPE_QUARANTINE_RETENTION_DAYS or 30
    spool_days: int | None = None  # default: MARKETPIPE_SPOOL_RETENTION_DAYS or 3
    spool_dir: str | None = None  # default: MARKETPIPE_SPOOL_DIR or data/spool


def _remove(fs: fsspec.AbstractFileSystem, expired: list[Expired]) -> None:
    for item in expired:
        fs.rm(item.path, recursive=True)


def _summary(expired: list[Expired], uri) -> dict:
    return {
        "paths": len(expired),
        "bytes": sum(e.size for e in expired),
        "listed": [uri(e.path) for e in expired[:_LISTED]],
    }


@dg.op(description="Delete quarantine and spool data past their retention (dry_run: list only).")
def remove_expired(
    context: dg.OpExecutionContext, config: RetentionConfig, lake: LakeResource
) -> dg.Output[dict]:
    today = evaluation_time().date()
    q_days = config.quarantine_days
    q_days = (
        retention_days(QUARANTINE_DAYS_VARIABLE, DEFAULT_QUARANTINE_DAYS)
        if q_days is None
        else q_days
    )
    s_days = config.spool_days
    s_days = retention_days(SPOOL_DAYS_VARIABLE, DEFAULT_SPOOL_DAYS) if s_days is None else s_days
    folder = config.spool_dir or str(spool_dir())

    quarantine = expired_quarantine(lake, today - dt.timedelta(days=q_days))
    rejected = expired_rejected(lake, today - dt.timedelta(days=q_days))
    spool_fs, spool, pending = expired_spool(folder, today - dt.timedelta(days=s_days), lake)
    if not config.dry_run:
        _remove(lake.fs, quarantine)
        _remove(lake.fs, rejected)
        _remove(spool_fs, spool)
    staging = lake.sweep_staging(dry_run=config.dry_run)
    verb = "would delete" if config.dry_run else "deleted"
    context.log.info(
        f"{verb} {len(quarantine)} quarantine partition(s) older than {q_days} days and "
        f"{len(rejected)} rejected batch(es) older than {q_days} days, {len(staging)} "
        f"abandoned staging path(s) and {len(spool)} spool path(s) older than {s_days} days "
        f"(as of {today}); kept "
        f"{len(pending)} expired spool session(s) not yet stored in the lake"
    )
    for item in pending:
        context.log.warning(f"kept {item.path}: its session is not in the lake yet")
    summary: dict[str, Any] = {
        "dry_run": config.dry_run,
        "as_of": today.isoformat(),
        "quarantine": _summary(quarantine, lake.uri),
        "spool": _summary(spool, lambda p: p),
        "rejected": _summary(rejected, lake.uri),
    }
    return dg.Output(
        summary,
        metadata={
            "dry_run": config.dry_run,
            "quarantine_retention_days": q_days,
            "spool_retention_days": s_days,
            "quarantine_paths": len(quarantine),
            "quarantine_bytes": summary["quarantine"]["bytes"],
            "spool_paths": len(spool),
            "spool_bytes": summary["spool"]["bytes"],
            "rejected_batches": len(rejected),
            "staging_paths": len(staging),
            "spool_kept_not_ingested": dg.MetadataValue.json([e.path for e in pending][:_LISTED]),
            ("would_delete" if config.dry_run else "deleted"): dg.MetadataValue.json(
                {
                    "quarantine": summary["quarantine"]["listed"],
                    "rejected": summary["rejected"]["listed"],
                    "staging": staging[:_LISTED],
                    "spool": summary["spool"]["listed"],
                }
            ),
        },
    )


@dg.job(
    name="lake_retention",
    description="Quarantine and rejected batches kept 30 days, spool captures 3 days "
    "(configurable), abandoned staging 1 day; stored partitions are never touched.",
)
def retention_job():
    remove_expired()


retention_schedule = dg.ScheduleDefinition(
    name="lake_retention_daily",
    job=retention_job,
    # After the KRX close (06:30 UTC), before its 18:00 run (09:00 UTC) and the US open.
    cron_schedule="30 7 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
