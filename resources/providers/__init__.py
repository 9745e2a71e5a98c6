"""Real market-data providers behind the source interface, over one resilient HTTP layer."""
