"""Dagster resources: the lake and the other stores, the market-data sources and providers, and
the trade collector. Built on checks, never on marketpipe_assets."""
