"""Reading typed Dagster metadata back in tests: tables as lists of rows, per partition."""

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
