"""Every ingested, session-partitioned dataset of the registry, built by the ingest factory:
one partition materialized from the synthetic source accounts for every row it sent (stored +
quarantined), and the quarantine on disk holds exactly the rows it reports, each with a rule."""

import polars as pl
import pytest

from marketpipe_assets.datasets import DATASETS
from tests.conftest import materialize, recent_sessions, synthetic_data

SESSION_DATASETS = [
    (market, d.name)
    for d in DATASETS
    if d.ingested and d.build is not None and d.name != "universe"
    for market in d.markets
]


def test_the_registry_names_every_ingested_session_dataset():
    assert {name for _, name in SESSION_DATASETS} == {
        "daily_prices",
        "intraday_bars",
        "order_books",
        "option_chains",
    }


@pytest.mark.parametrize(("market", "dataset"), SESSION_DATASETS)
def test_every_dataset_reports_sent_equal_stored_plus_quarantined(
    market, dataset, tmp_path, monkeypatch, lake, instance
):
    monkeypatch.setenv("MARKETPIPE_SPOOL_DIR", str(tmp_path / "spool"))
    # Over 1,000 symbols at 1% every 2026 session of both markets has bad rows to quarantine
    # and completeness >= 97% to publish (100 symbols at 2% gave some sessions none, 400 some
    # sessions under 95%).
    market_data = synthetic_data(symbols=1000, missing_rate=0.0, bad_row_rate=0.01)
    key = recent_sessions(market, 2)[0]
    for datasets, partition in ((("universe",), None), ((dataset,), key)):
        result = materialize(
            market,
            datasets,
            lake=lake,
            market_data=market_data,
            instance=instance,
            partition_key=partition,
        )
    (materialization,) = result.asset_materializations_for_node(f"{market}__{dataset}")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["sent"] == meta["stored"] + meta["quarantined"]
    assert meta["stored"] > 0
    if dataset == "option_chains":
        return  # its synthetic chains carry no defects
    assert meta["quarantined"] > 0
    quarantine = tmp_path / "lake" / "quarantine" / dataset
    on_disk = pl.read_parquet(list(quarantine.rglob("*.parquet")))
    assert len(on_disk) == meta["quarantined"]
    assert on_disk["violations"].list.len().min() >= 1
