"""What valid market data is, the ground floor the other packages build on: the schemas, the
markets' calendars and sessions, the rulebooks and the check results built from them, the Great
Expectations suite and the greeks. It imports nothing of resources or marketpipe_assets."""
