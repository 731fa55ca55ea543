"""Audit results and health scores per date × symbol, written to the metadata store (MySQL).

Thin glue over the candle domain's audit (``dm_assets/candles/audit.py``). Both assets judge a
partition as of the run's time (:func:`dm_assets.clock.run_time_ms`), the instant the candle
assets of the same run built it against: a minute that closed after that instant is not a gap
for the audit when it was not yet due for the build.
"""

from collections.abc import Sequence

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from dm_assets.candles.assets import BACKFILL_POLICY
from dm_assets.clock import run_time_ms
from dm_assets.partitions import DATE_SYMBOL_PARTITIONS
from dm_resources.contracts import AUDIT_RESULTS_PATH, CANDLE_ASSET_PATHS, HEALTH_SCORES_PATH, QUALITY_GROUP
from dm_resources.metadata.schemas import HealthMetricIn, HealthMetricRecord
from dm_resources.resources import MetadataResource, MongoResource

AUDIT_RESULTS_KEY = AssetKey(AUDIT_RESULTS_PATH)
HEALTH_SCORES_KEY = AssetKey(HEALTH_SCORES_PATH)
_CANDLE_DEPS = [AssetKey(path) for path in CANDLE_ASSET_PATHS]
#: Rows of the health table on a materialization (the lowest scores; see ``health_scores``).
SCORES_TABLE_MAX_ROWS = 50
FAILURES_MAX_ROWS = 50


@asset(
    key=AUDIT_RESULTS_KEY,
    partitions_def=DATE_SYMBOL_PARTITIONS,
    backfill_policy=BACKFILL_POLICY,
    deps=_CANDLE_DEPS,
    group_name=QUALITY_GROUP,
    description=(
        "Runs every candle check (gaps, duplicates, OHLC sanity, bad prints, source agreement) for each interval "
        "of the partition and appends the results with a severity to `audit_logs` in the metadata store."
    ),
)
def audit_results(
    context: AssetExecutionContext, mongo: MongoResource, metadata: MetadataResource
) -> MaterializeResult:
    from dm_assets.candles import audit

    store, meta = mongo.get_store(), metadata.get_store()
    failed, written = audit.partition_audit(
        store, meta, context.partition_keys, context.run.run_id, now=run_time_ms(context)
    )
    by_severity: dict[str, int] = {}
    for r in failed:
        by_severity[r.severity] = by_severity.get(r.severity, 0) + 1
    # Bounded, as the health table: a range run's metadata is copied onto every partition's event.
    shown = failed[:FAILURES_MAX_ROWS]
    more = f"\n- … {len(failed) - len(shown)} more in `audit_logs`" if len(failed) > len(shown) else ""
    return MaterializeResult(
        metadata={
            "audit_rows_written": written,
            "failed_checks": len(failed),
            "failed_by_severity": MetadataValue.json(by_severity),
            "failures": MetadataValue.md(
                "\n".join(
                    f"- **{r.severity}** {r.partition_key} {r.interval} `{r.check_name}`: {r.message}" for r in shown
                )
                + more
                or "none"
            ),
        }
    )


@asset(
    key=HEALTH_SCORES_KEY,
    partitions_def=DATE_SYMBOL_PARTITIONS,
    backfill_policy=BACKFILL_POLICY,
    deps=[AUDIT_RESULTS_KEY, *_CANDLE_DEPS],
    group_name=QUALITY_GROUP,
    description=(
        "Health score 0–100 per symbol, interval and day from completeness, freshness and consistency, the "
        "last computed from the check outcomes (weights in dm_assets/candles/health.py), upserted into "
        "`health_metrics` with the reasons in `details`; the materialization carries the lowest scores as a table."
    ),
)
def health_scores(
    context: AssetExecutionContext, mongo: MongoResource, metadata: MetadataResource
) -> MaterializeResult:
    from dm_assets.candles import audit

    store, meta = mongo.get_store(), metadata.get_store()
    rows = audit.partition_health(store, meta, context.partition_keys, context.run.run_id, now=run_time_ms(context))
    below, table = scores_table(rows)
    return MaterializeResult(
        metadata={
            "rows": len(rows),
            "min_score": min((r.score for r in rows), default=100.0),
            "mean_score": round(sum(r.score for r in rows) / len(rows), 2) if rows else 100.0,
            "below_100": below,
            "scores": MetadataValue.md(table),
        }
    )


def scores_table(rows: Sequence[HealthMetricIn | HealthMetricRecord]) -> tuple[int, str]:
    """(rows below 100, the markdown table of the lowest scores, at most ``SCORES_TABLE_MAX_ROWS``).

    Bounded because Dagster copies a range run's metadata onto every partition's materialization:
    all rows of a 182-partition run were 91 KB per event, 16.6 MB written to PostgreSQL per run
    (``bench/bench_history.py``). Every row stays in ``health_metrics`` and on ``GET /health``.
    """
    below = sorted((r for r in rows if r.score < 100), key=lambda r: (r.score, str(r.day), r.symbol, r.interval))
    shown = below[:SCORES_TABLE_MAX_ROWS]
    lines = [
        "| day | symbol | interval | completeness | freshness | consistency | score | why |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r.day} | {r.symbol} | {r.interval} | {r.completeness:.2f} | {r.freshness:.2f} | "
            f"{r.consistency:.2f} | **{r.score:.2f}** | {_why(r.details)} |"
            for r in shown
        ),
    ]
    if len(shown) < len(rows):
        lines.append(f"\n{len(rows) - len(shown)} more row(s) not shown ({len(rows) - len(below)} at 100).")
    return len(below), "\n".join(lines)


def _why(details: dict | None) -> str:
    """The failed checks behind a score, for the table: ``no_bad_prints ERROR ×1``."""
    failed = (details or {}).get("failed_checks") or {}
    return ", ".join(f"{k} {v['severity']} ×{v['count']}" for k, v in failed.items()) or "—"


QUALITY_ASSETS = [audit_results, health_scores]
