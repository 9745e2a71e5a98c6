"""Write-audit-publish for partitioned assets: a run's staged batch is published only once its
blocking checks, judged on the frames just staged, have passed.

A failed blocking check records every check result, moves the batch to the lake's `_rejected/`
folder (named in the failure) and fails the step, so no materialization is recorded, the
previously published partitions stay as they were and nothing downstream sees the batch.
"""

from collections.abc import Iterator, Sequence

import dagster as dg

from resources.lake import LakeResource
from resources.publishing import Batch


def publish_if_checks_pass(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    batch: Batch,
    results: Sequence[dg.AssetCheckResult],
) -> Iterator[dg.AssetCheckResult]:
    """`yield from` this before the asset's MaterializeResult (with `check_results=results`)."""
    blocking = {spec.name for spec in context.assets_def.check_specs if spec.blocking}
    failed = [
        r
        for r in results
        if r.check_name in blocking and not r.passed and r.severity == dg.AssetCheckSeverity.ERROR
    ]
    if not failed:
        lake.publish(batch)
        return
    yield from results
    reason = "; ".join(f"{r.check_name}: {r.description}" for r in failed)
    where = lake.reject(batch, reason)
    raise dg.Failure(
        description=(
            f"{context.asset_key.to_user_string()} not published: blocking check(s) failed "
            f"({reason}). The previously published partitions are unchanged; the rejected batch "
            f"(the stored and quarantine files it would have written, and _reason.json) is in "
            f"{where}"
        ),
        metadata={
            "rejected_batch": dg.MetadataValue.path(where),
            "failed_checks": [r.check_name for r in failed],
        },
    )
