"""Real market-data providers behind the source interface, over one resilient HTTP layer.

registry.py lists them: each provider module's source declares its market and datasets, and its
`source_from_env() -> Source` reads its credentials, base URL and rate limit from the environment
(CONTRACT section 4).
"""
