"""Dagster resources: the lake and the market-data sources."""
