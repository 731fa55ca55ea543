"""The order book's continuity check: its spec, and one result folded from every partition of a run.

The check is evaluated by the asset itself (``check_specs``): it needs the replay the asset
just did, and repeating a day's replay in a separate step would double the run's cost.
"""

from __future__ import annotations

from collections.abc import Sequence

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, MetadataValue

from dm_assets.orderbook.report import CHECK_NAME, UNRECOVERABLE, BookDay
from dm_resources.contracts import ORDERBOOK_SNAPSHOTS_PATH

CONTINUITY_SPEC = AssetCheckSpec(
    CHECK_NAME,
    asset=AssetKey(ORDERBOOK_SNAPSHOTS_PATH),
    description="Fails when the rebuild met a continuity break (pu != previous u), a crossed book, a snapshot the "
    "stored diffs cannot continue, or any time without a valid book; ERROR above 5 % of the window without a book, "
    "else WARN. Spans of a past day that no stored snapshot can re-sync are labelled unrecoverable.",
)


def continuity_result(days: Sequence[BookDay]) -> AssetCheckResult:
    """Passed only when every partition passed; the worst severity; every count added up."""
    failed = [b for b in days if not b.passed]
    lost = [
        f"{b.day}|{b.symbol} {s['start']}–{s['end']}: {s['reason']}"
        for b in days
        for s in b.spans()
        if s["status"] == UNRECOVERABLE
    ]
    return AssetCheckResult(
        check_name=CHECK_NAME,
        asset_key=CONTINUITY_SPEC.asset_key,
        passed=not failed,
        severity=AssetCheckSeverity.ERROR if any(b.severity == "ERROR" for b in failed) else AssetCheckSeverity.WARN,
        description="; ".join(b.message() for b in (failed or days))[:2000],
        metadata={
            "breaks": sum(b.stats.breaks for b in days),
            "resyncs": sum(b.stats.resyncs for b in days),
            "crossed": sum(b.stats.crossed for b in days),
            "snapshots_unusable": sum(b.stats.snapshots_unusable for b in days),
            "invalid_seconds": sum(b.stats.invalid_ms for b in days) / 1000,
            "unrecoverable_seconds": sum(b.unrecoverable_ms for b in days) / 1000,
            "unrecoverable": MetadataValue.json(lost[:20]),
            "unusable_snapshots": MetadataValue.json([r for b in days for (_, _, r) in b.stats.unusable][:20]),
        },
    )
