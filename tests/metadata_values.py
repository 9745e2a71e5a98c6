"""Reading typed Dagster metadata back in tests: tables as lists of rows, per partition."""

from collections import Counter

import dagster as dg


def plain(value: dg.MetadataValue):
    """A table as its rows (dicts); any other value as its Python value."""
    if isinstance(value, dg.TableMetadataValue):
        return [record.data for record in value.records]
    return value.value


def counts(value: dg.TableMetadataValue) -> dict:
    """A two-column table (name, count), e.g. rows_by_source, as {name: count}."""
    key, count = (column.name for column in value.schema.columns)
    return {record.data[key]: record.data[count] for record in value.records}


def by_partition(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, dict]:
    """Each partition's materialization metadata of `key` in the run, as plain values."""
    return {
        event.partition: {k: v for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
        if event.asset_key == key
    }


def run_metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    """The metadata of `key` in the run as plain values, rows_by_source as {source: rows}. A
    range run's per-partition facts are summed over its partitions (and checked against the
    `range_*` total each partition carries), so a test reads the run's totals either way."""
    metas = list(by_partition(result, key).values())
    out = {name: plain(value) for name, value in metas[0].items()}
    if len(metas) > 1:
        for name in [n for n in out if f"range_{n}" in out]:
            out[name] = sum(meta[name].value for meta in metas)
            assert out[name] == out[f"range_{name}"], name
    if "rows_by_source" in out:
        total = Counter()
        for meta in metas:
            total.update(counts(meta["rows_by_source"]))
        out["rows_by_source"] = dict(total)
    return out
