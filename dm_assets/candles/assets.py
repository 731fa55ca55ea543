"""Candle assets, partitioned by date × symbol: one subsettable step builds 1m and derives 5m…1d.

Thin: the work is :class:`dm_assets.candles.engine.Engine`. The six asset keys, their lineage and
each interval's checks are what they were when every interval was a step of its own; what changed
is the cost. One step per run instead of six per partition, each partition's 1m frame built once
and the higher intervals derived from it in memory, the checks evaluated once per partition and
interval (the quality assets reuse their outcomes, see ``audit``), REST and archive fetches in
parallel. A run carries many partitions (``BACKFILL_POLICY``).

A blocking 1m check that fails with ERROR stops that partition's derived intervals only: the
engine does not write them, this step reports them materialized only for the partitions it wrote
(explicit per-partition events), and the failing check then fails the step as Dagster's blocking
checks do, so the quality assets of the run wait for the repair run the gap sensor requests.
"""

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    BackfillPolicy,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from dm_assets.candles import audit, checks
from dm_assets.candles.checks import CheckResult
from dm_assets.candles.engine import BatchResult, Engine, PartitionOutcome
from dm_assets.candles.history import ArchiveBatch
from dm_assets.candles.retry import CANDLE_RETRY_POLICY, transient_only
from dm_assets.clock import run_time_ms
from dm_assets.partitions import DATE_SYMBOL_PARTITIONS, partition_key, split_key
from dm_assets.policy import LAYER_TAG
from dm_assets.raw.assets import raw_key
from dm_resources.contracts import (
    CANDLE_INTERVALS,
    CANDLES_GROUP,
    HIGHER_CANDLE_INTERVALS,
    RAW_GROUP,
    candle_asset_path,
)
from dm_resources.heap import freeze_heap
from dm_resources.resources import BinanceResource, MetadataResource, MongoResource
from dm_resources.settings import get_settings

HIGHER_INTERVALS = HIGHER_CANDLE_INTERVALS
INTERVALS = CANDLE_INTERVALS

# Partitions per run when Dagster's backfill daemon splits a selection (README "Backfills"): a run's
# start-up and Dagster's per-run events are paid once for up to this many partitions.
_PER_RUN = get_settings().backfill_partitions_per_run
BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=_PER_RUN) if _PER_RUN else BackfillPolicy.single_run()

CANDLE_FRESHNESS = FreshnessPolicy.time_window(
    fail_window=dt.timedelta(minutes=30), warn_window=dt.timedelta(minutes=10)
)

#: Binance's public archive: upstream of the 1m candles it fills (lineage shows where history came from).
ARCHIVE_KEY = AssetKey(["binance", "klines_archive"])
ARCHIVE_SPEC = AssetSpec(
    key=ARCHIVE_KEY,
    description=(
        "Binance's public archive of USD-M futures 1m klines (data/futures/um/{monthly,daily}/klines, "
        "DM_BINANCE_ARCHIVE_URL), each file checked against its published sha256 and taken whole or refused. "
        "External: read by the candle build, never materialized here; the files used are in `archive_files`."
    ),
    group_name=RAW_GROUP,
    kinds={"binance"},
    tags={LAYER_TAG: RAW_GROUP},
)


def candles_key(interval: str) -> AssetKey:
    return AssetKey(candle_asset_path(interval))


_DESCRIPTIONS = {
    "1m": (
        "1-minute candles for one UTC day of one symbol, in MongoDB `candles` (interval 1m). Each minute comes "
        "from the exchange's closed kline, else from REST or Binance's public archive (closed days, whole "
        "checked files), else from aggregated trades where their consecutive ids prove the minute complete; "
        "what the exchange itself lacks is recorded as confirmed missing after bounded attempts. The "
        "still-open minute is never stored. Idempotent."
    ),
}


def _derived_description(interval: str) -> str:
    return (
        f"{interval} candles derived from the stored 1m candles with Binance's UTC bucket alignment "
        f"([open, open + {interval})): open of the first minute, max high, min low, close of the last, "
        "summed volumes and trades. A bucket is written only once each of its minutes is present or "
        "confirmed missing, so it equals the exchange's own kline."
    )


CANDLE_SPECS = [
    AssetSpec(
        key=candles_key(iv),
        deps=[raw_key("klines"), raw_key("agg_trades"), ARCHIVE_KEY] if iv == "1m" else [candles_key("1m")],
        group_name=CANDLES_GROUP,
        description=_DESCRIPTIONS.get(iv) or _derived_description(iv),
        freshness_policy=CANDLE_FRESHNESS,
        # A derived interval is not written for a partition whose blocking 1m check failed.
        skippable=iv != "1m",
    )
    for iv in INTERVALS
]


def _check_specs(interval: str) -> list[AssetCheckSpec]:
    key = candles_key(interval)
    return [
        AssetCheckSpec(name, asset=key, description=checks.CHECKS[name], blocking=name in checks.BLOCKING)
        for name in checks.check_names(interval)
    ]


CHECK_SPECS = [spec for iv in INTERVALS for spec in _check_specs(iv)]

_SEVERITY = {"WARN": AssetCheckSeverity.WARN, "ERROR": AssetCheckSeverity.ERROR, "OK": AssetCheckSeverity.WARN}


def _check_results(interval: str, results: Iterable[CheckResult], selected: set[Any]) -> list[AssetCheckResult]:
    """Dagster results: passed only when nothing was found; severity from the check's documented rule."""
    key = candles_key(interval)
    return [
        AssetCheckResult(
            check_name=r.name,
            asset_key=key,
            passed=r.passed,
            severity=_SEVERITY[r.severity],
            description=audit.message(r),
            metadata={k: _meta_value(v) for k, v in r.metadata().items()},
        )
        for r in results
        if (key, r.name) in selected
    ]


def _meta_value(v: object) -> Any:
    return MetadataValue.json(v) if isinstance(v, list | dict) else v


def folded_checks(outcomes: Iterable[PartitionOutcome], interval: str) -> list[CheckResult]:
    """One result per check over the run's partitions (the worst severity, counts added up)."""
    by_name: dict[str, list[CheckResult]] = {}
    for p in outcomes:
        for r in p.checks.get(interval, []):
            by_name.setdefault(r.name, []).append(r)
    return [audit.fold(v) for v in by_name.values()]


def partition_metadata(p: PartitionOutcome, interval: str) -> dict[str, Any]:
    """What one partition's materialization of one interval shows in the UI."""
    b = p.builds[interval]
    meta: dict[str, Any] = {
        "rows": b.rows,
        "expected": b.expected,
        "by_source": MetadataValue.json(b.by_source),
        "missing": len(b.missing),
        "confirmed_missing": len(b.confirmed_missing),
        "upserted": b.upserted,
        "modified": b.modified,
    }
    if b.flagged:
        meta["flagged"] = MetadataValue.json(b.flagged)
    if b.provisional:
        meta["provisional"] = b.provisional
    if interval == "1m":
        if b.rest_requests:
            meta["rest_requests"] = b.rest_requests
        if b.rest_error:
            meta["rest_error"] = MetadataValue.text(b.rest_error)
        for name in ("detected", "repaired", "kept"):
            if getattr(b, name):
                meta[name] = len(getattr(b, name))
        if b.archive_files:  # provenance: which published files, their sha256, when fetched
            meta["archive_files"] = MetadataValue.json(b.archive_files)
        if b.archive_refused:
            meta["archive_refused"] = MetadataValue.json(b.archive_refused)
    return meta


# Per-partition metadata costs Dagster a look-up of the partition key per call (a query for dynamic
# partitions: ~70 ms each on PostgreSQL, measured by bench/bench_history.py); a bulk run shows totals.
PER_PARTITION_METADATA_MAX = 5


def _run_metadata(result: BatchResult, interval: str, written: list[PartitionOutcome]) -> dict[str, Any]:
    """Totals over the run, on every partition's event (per-partition detail for small runs only)."""
    builds = [p.builds[interval] for p in written]
    by_source: dict[str, int] = {}
    for b in builds:
        for k, v in b.by_source.items():
            by_source[k] = by_source.get(k, 0) + v
    meta: dict[str, Any] = {
        "partitions_in_run": len(written),
        "rows_in_run": sum(b.rows for b in builds),
        "by_source_in_run": MetadataValue.json(by_source),
        "missing_in_run": sum(len(b.missing) for b in builds),
        "upserted_in_run": sum(b.upserted for b in builds),
        "modified_in_run": sum(b.modified for b in builds),
    }
    if interval == "1m":
        meta["rest_requests_in_run"] = result.rest_requests
        files = {f["file"]: f for b in builds for f in b.archive_files}
        if files:  # provenance: the published files this run's minutes came from, with their sha256
            meta["archive_files_in_run"] = MetadataValue.json(
                [{k: f[k] for k in ("file", "sha256", "fetched_at")} for f in files.values()]
            )
        refused = [r for b in builds for r in b.archive_refused]
        if refused:
            meta["archive_refused_in_run"] = MetadataValue.json(refused)
        errors = [f"{b.day}|{b.symbol}: {b.rest_error}" for b in builds if b.rest_error]
        if errors:
            meta["rest_errors"] = MetadataValue.text("\n".join(errors[:50]))
    return meta


@multi_asset(
    name="candles",
    specs=CANDLE_SPECS,
    check_specs=CHECK_SPECS,
    partitions_def=DATE_SYMBOL_PARTITIONS,
    backfill_policy=BACKFILL_POLICY,
    can_subset=True,
    retry_policy=CANDLE_RETRY_POLICY,
    description=(
        "1m candles for the run's partitions, then 5m, 15m, 1h, 4h and 1d derived from them in memory, each "
        "written once, with every interval's checks evaluated once per partition (audit and health reuse them)."
    ),
)
def candles(
    context: AssetExecutionContext, mongo: MongoResource, metadata: MetadataResource, binance: BinanceResource
) -> Iterator[Any]:
    freeze_heap("run worker", collect=True)  # the run worker's start-up heap, out of every full collection
    intervals = [iv for iv in INTERVALS if candles_key(iv) in context.selected_asset_keys]
    keys = [split_key(pk) for pk in context.partition_keys]
    selected_checks = {(k.asset_key, k.name) for k in context.selected_asset_check_keys}
    with transient_only():
        store, meta = mongo.get_store(), metadata.get_store()
        client = binance.get_client(store) if "1m" in intervals else None
        archive_client = binance.get_archive() if "1m" in intervals else None
        engine = Engine(
            store,
            meta,
            client,
            archive=ArchiveBatch(archive_client, run_id=context.run.run_id) if archive_client else None,
            intervals=intervals,
            now=run_time_ms(context),
            run_id=context.run.run_id,
        )
        result = engine.run(keys)
    outcomes = result.partitions
    blocked = [p for p in outcomes if p.blocked]
    for p in blocked:
        context.log.warning(
            f"{p.partition_key}: blocking 1m check(s) {', '.join(p.blocked_by)} failed; its derived intervals "
            "were not written (the gap sensor requests the repair run)"
        )
    for iv in intervals:
        key = candles_key(iv)
        written = [p for p in outcomes if iv in p.builds]
        results = _check_results(iv, folded_checks(written, iv), selected_checks)
        if iv != "1m" and blocked:
            # Materialized only where written: one event per written partition, no output for the rest.
            for p in written:
                yield AssetMaterialization(
                    asset_key=key, partition=partition_key(p.day, p.symbol), metadata=partition_metadata(p, iv)
                )
            yield from results
            continue
        if len(written) <= PER_PARTITION_METADATA_MAX:
            for p in written:
                context.add_asset_metadata(partition_metadata(p, iv), asset_key=key, partition_key=p.partition_key)
        yield MaterializeResult(asset_key=key, metadata=_run_metadata(result, iv, written), check_results=results)
    if result.banned is not None:
        raise Failure(
            description=(
                f"Binance REST banned this IP (HTTP 418): {result.banned}. The run stopped; "
                f"{sum(1 for p in outcomes if p.builds.get('1m') and p.builds['1m'].rest_error)} partition(s) kept "
                "what the archive and stored data gave and are incomplete. No run sends to Binance until the ban "
                "ends (it is shared through MongoDB); re-run these partitions after it."
            ),
            metadata={"banned_until_s": result.banned.retry_after_s or 0.0},
            allow_retries=False,
        )


CANDLE_ASSETS = [candles]
CANDLE_SOURCE_SPECS = [ARCHIVE_SPEC]
