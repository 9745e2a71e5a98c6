"""Real market-data providers behind the source interface, over one resilient HTTP layer.

Each module named here exposes `source_from_env() -> Source`, reading its credentials, base URL
and rate limit from the environment (CONTRACT section 4).
"""

PROVIDERS = ("kis", "krx", "twelvedata", "finnhub", "yahoo")
