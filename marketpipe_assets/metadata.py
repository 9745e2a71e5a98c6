"""Small helpers for Dagster metadata."""

from __future__ import annotations

import dagster as dg
import polars as pl


def preview(frame: pl.DataFrame, sessions: list) -> dict:
    """A preview for a single-session run. A range run's metadata is copied into every
    partition's materialization event, where a preview of the range would mislead and, over
    thousands of partitions, doubles the size of Dagster's event log."""
    return {"preview": dg.MetadataValue.md(markdown_table(frame))} if len(sessions) == 1 else {}


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
