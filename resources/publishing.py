"""Write-audit-publish on the lake's filesystem: staged batches, the publish journal, rejects.

A batch's files are written flat into <lake>/_staging/<batch id>/, each named by the path it will
have (`/` written `~`; the underscore hides them from Hive readers, which skip `_` and `.`
names). Publishing writes ONE
journal file, <lake>/_journal/<batch id>.json (a rename locally, a single PUT on S3: it exists
whole or not at all), listing every move and every file to delete; then applies them (os.replace
locally; copy then delete on S3) and removes the staging folder and the journal. Every step can
be repeated, so a journal left by a process that died is rolled forward by recover(), which
every read and publish of the lake runs first: marketpipe's readers then see each partition's
previous files or the batch's, never a mix. Until recovery, a plain reader of a half-published
lake (DuckDB, Spark) can see some partitions new and others old, or, for one partition, a new
stored file beside an old quarantine file, because stored and quarantine rows live in separate
folders (CONTRACT section 3).

Concurrent publishers of the same partition are not serialised; Dagster runs one step per
asset and partition at a time unless launched twice by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import fsspec

STAGING = "_staging"
JOURNAL = "_journal"
REJECTED = "_rejected"
REASON_FILE = "_reason.json"
# A staged batch this old was abandoned by a run that died before publishing or rejecting it.
STALE_AFTER = dt.timedelta(days=1)
_STAMP = "%Y%m%dT%H%M%SZ"
# Concurrent S3 copies and deletes: each is one round trip, so latency, not bandwidth, bounds it.
_S3_THREADS = 16


@dataclasses.dataclass(frozen=True)
class Batch:
    """Files staged in <lake>/_staging/<id>/, each named by its path relative to the lake, and
    the published files the batch removes (quarantine partitions left without rows)."""

    id: str
    run_id: str
    dataset: str
    market: str
    files: tuple[str, ...] = ()
    deletes: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return f"{STAGING}/{self.id}"

    def staged(self, relative: str) -> str:
        # Flat: one folder per batch, so staging creates and removes no tree of folders.
        return f"{self.folder}/{relative.replace('/', '~')}"

    @property
    def created(self) -> dt.datetime:
        return _stamp_time(self.id)

    def including(self, files: Iterable[str], deletes: Iterable[str]) -> Batch:
        files = (*self.files, *files)
        kept = tuple(d for d in (*self.deletes, *deletes) if d not in set(files))
        return dataclasses.replace(self, files=files, deletes=kept)


def new_batch(run_id: str, dataset: str, market: str) -> Batch:
    now = dt.datetime.now(dt.UTC)
    return Batch(f"{now:{_STAMP}}-{uuid.uuid4().hex[:12]}", run_id, dataset, market)


def _stamp_time(name: str) -> dt.datetime:
    return dt.datetime.strptime(name.split("-", 1)[0], _STAMP).replace(tzinfo=dt.UTC)


def discard(fs: fsspec.AbstractFileSystem, root: str, batch: Batch) -> None:
    """Remove what a batch staged (a staging write failed: the run fails, nothing to keep)."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm(f"{root}/{batch.folder}", recursive=True)


# Publishing -----------------------------------------------------------------------------------
def publish(fs: fsspec.AbstractFileSystem, root: str, local: bool, batch: Batch) -> None:
    journal = {
        "batch": batch.id,
        "run_id": batch.run_id,
        "dataset": batch.dataset,
        "market": batch.market,
        "moves": [[batch.staged(f), f] for f in batch.files],
        "deletes": list(batch.deletes),
        "staging": batch.folder,
    }
    path = f"{root}/{JOURNAL}/{batch.id}.json"
    data = json.dumps(journal).encode()
    if local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{os.path.dirname(path)}/.{batch.id}.json.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)
    _roll_forward(fs, root, local, journal, path)


def _roll_forward(
    fs: fsspec.AbstractFileSystem, root: str, local: bool, journal: Mapping, path: str
) -> None:
    """Apply a journal; every step is idempotent, so a second pass finishes a first one."""
    if local:
        made: set[str] = set()
        for staged, final in journal["moves"]:
            target = f"{root}/{final}"
            folder = os.path.dirname(target)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            with contextlib.suppress(FileNotFoundError):  # moved by an earlier pass
                os.replace(f"{root}/{staged}", target)
        for relative in journal["deletes"]:
            _remove_local(f"{root}/{relative}")
        shutil.rmtree(f"{root}/{journal['staging']}", ignore_errors=True)
        _remove_local(path, prune=False)
        return

    def move(pair: list[str]) -> None:
        staged, final = f"{root}/{pair[0]}", f"{root}/{pair[1]}"
        try:
            fs.copy(staged, final)
        except FileNotFoundError:  # copied and deleted by an earlier pass
            return
        fs.rm_file(staged)

    with ThreadPoolExecutor(_S3_THREADS) as pool:
        list(pool.map(move, journal["moves"]))
        # Deleting a missing S3 key succeeds, so a repeated pass needs no existence check.
        list(pool.map(lambda relative: fs.rm_file(f"{root}/{relative}"), journal["deletes"]))
    fs.rm_file(path)
    fs.invalidate_cache()


def _remove_local(path: str, *, prune: bool = True) -> None:
    """Remove a file if still there, and (prune) its folder once empty: a `date=` folder left
    empty would still be listed as a partition."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    if prune:
        # Not empty (other files, hour= folders) or already gone: left as it is.
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))


def recover(fs: fsspec.AbstractFileSystem, root: str, local: bool) -> int:
    """Roll forward, oldest first, every journal a crashed publisher left; returns how many."""
    names = _journal_names(fs, root, local)
    for name in names:
        path = f"{root}/{JOURNAL}/{name}"
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:  # finished meanwhile by its publisher or another reader
            continue
        _roll_forward(fs, root, local, json.loads(data), path)
    return len(names)


def _journal_names(fs: fsspec.AbstractFileSystem, root: str, local: bool) -> list[str]:
    folder = f"{root}/{JOURNAL}"
    try:
        if local:
            names = os.listdir(folder)
        else:
            names = [p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False, refresh=True)]
    except FileNotFoundError:
        return []
    # A hidden name is a journal still being written (local temp file): not published yet.
    return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))


# Rejecting ------------------------------------------------------------------------------------
def reject(fs: fsspec.AbstractFileSystem, root: str, local: bool, batch: Batch, reason: str) -> str:
    """Move a staged batch to <lake>/_rejected/<dataset>/market=<m>/<UTC time>-<run id>/;
    returns that folder."""
    folder = f"{root}/{REJECTED}/{batch.dataset}/market={batch.market}"
    target = f"{folder}/{batch.id.split('-', 1)[0]}-{batch.run_id or 'no-run'}"
    if fs.exists(target):  # the same run rejected twice within a second
        target = f"{target}-{batch.id.rsplit('-', 1)[-1]}"
    # The files go to the paths they would have had in the lake, so the folder reads as a lake.
    if local:
        os.makedirs(target)
        for relative in batch.files:
            os.makedirs(os.path.dirname(f"{target}/{relative}"), exist_ok=True)
            os.replace(f"{root}/{batch.staged(relative)}", f"{target}/{relative}")
        shutil.rmtree(f"{root}/{batch.folder}", ignore_errors=True)
    else:

        def move(relative: str) -> None:
            fs.copy(f"{root}/{batch.staged(relative)}", f"{target}/{relative}")
            fs.rm_file(f"{root}/{batch.staged(relative)}")

        with ThreadPoolExecutor(_S3_THREADS) as pool:
            list(pool.map(move, batch.files))
    why = {
        "reason": reason,
        "run_id": batch.run_id,
        "batch": batch.id,
        "dataset": batch.dataset,
        "market": batch.market,
        "rejected_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "would_have_written": list(batch.files),
        "would_have_removed": list(batch.deletes),
    }
    fs.pipe_file(f"{target}/{REASON_FILE}", json.dumps(why, indent=2).encode())
    return target


# Sweeping -------------------------------------------------------------------------------------
def stale(fs: fsspec.AbstractFileSystem, root: str, local: bool, cutoff: dt.datetime) -> list[str]:
    """Staged batches created before `cutoff` that no journal names (a journal's batch is
    published by the next recovery, never swept), and hidden `.tmp` files older than `cutoff`
    (left by a process killed mid-write; S3 has none, its writes are single PUTs)."""
    journaled = {n.removesuffix(".json") for n in _journal_names(fs, root, local)}
    found = []
    try:
        batches = fs.ls(f"{root}/{STAGING}", detail=False)
    except FileNotFoundError:
        batches = []
    for path in sorted(batches):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        try:
            created = _stamp_time(name)
        except ValueError:  # not a batch folder of ours
            continue
        if created < cutoff and name not in journaled:
            found.append(path.rstrip("/"))
    if local:
        for folder, dirs, files in os.walk(root):
            if folder == root:
                dirs[:] = [d for d in dirs if d != STAGING]
            for name in files:
                path = os.path.join(folder, name)
                hidden_tmp = name.startswith(".") and name.endswith(".tmp")
                if hidden_tmp and os.path.getmtime(path) < cutoff.timestamp():
                    found.append(path)
    return found
