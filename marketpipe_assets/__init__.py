"""marketpipe: market-data assets for KRX and US on Dagster."""

import warnings

import dagster as dg

# A partition range must run as one run (BackfillPolicy.single_run), and Dagster 1.13 still marks
# the asset decorator's `backfill_policy` parameter as beta, with no stable equivalent. It is used
# on purpose by every partitioned asset, so its warning is silenced once here, before any asset
# module is imported, instead of being printed for each asset (the demo, the UI, the CLI).
warnings.filterwarnings(
    "ignore", message="Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning
)
