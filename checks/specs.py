"""Asset checks declared as data: each dataset lists its checks once (name, what it promises,
whether a failure blocks the batch) and `check_specs` turns the list into Dagster's specs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    # A blocking check that fails keeps the batch unpublished and stops what depends on it.
    blocking: bool = False


def rules_check(name: str, rules: Sequence, what: str, *, blocking: bool = True) -> Check:
    """The check that stored rows obey every rule of a rulebook; `what` has a `{rules}` slot
    for the rules' names and descriptions."""
    listed = "; ".join(f"{r.name}: {r.description}" for r in rules)
    return Check(name, what.format(rules=listed), blocking)


def check_specs(asset_key: dg.AssetKey, checks: Sequence[Check]) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(c.name, asset=asset_key, blocking=c.blocking, description=c.description)
        for c in checks
    ]
