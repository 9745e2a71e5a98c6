"""marketpipe: market-data assets for KRX and US on Dagster."""
