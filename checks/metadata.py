"""Metadata vocabulary shared by the checks and the assets: what a person reads at a glance in a
check's or an asset's metadata (the asset-side helpers are in marketpipe_assets/metadata.py)."""

from __future__ import annotations

import polars as pl


def markdown_table(frame: pl.DataFrame, limit: int = 10) -> str:
    """The first `limit` rows as a markdown table (polars has no to_markdown)."""
    if frame.is_empty():
        return "_no rows_"
    head = frame.head(limit)
    lines = [
        "| " + " | ".join(head.columns) + " |",
        "|" + "---|" * len(head.columns),
        *(
            "| " + " | ".join("" if v is None else str(v) for v in row) + " |"
            for row in head.rows()
        ),
    ]
    if len(frame) > limit:
        lines.append(f"\n_{len(frame) - limit} more rows_")
    return "\n".join(lines)
