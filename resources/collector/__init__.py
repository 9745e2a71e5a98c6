"""The trade collector: websocket feeds (Finnhub, KIS, synthetic), the receive loop that commits
every trade to the spool (resources/trade_spool.py), and the flusher that moves the spool to the
lake. `marketpipe collect` (marketpipe_assets/collect.py) runs them."""
