"""`make bench`: the issue's benchmarks (backfill, indicators, rules, one daily partition)."""
