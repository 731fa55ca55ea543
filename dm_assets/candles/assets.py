"""Candle assets, partitioned by date × symbol, with their checks. Thin: logic is in build.py."""

import datetime as dt
from collections.abc import Iterable
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from dm_assets.candles import audit, build, checks
from dm_assets.candles.checks import CheckResult
from dm_assets.clock import run_time_ms
from dm_assets.partitions import DATE_SYMBOL_PARTITIONS, split_key
from dm_assets.raw.assets import raw_key
from dm_resources.contracts import CANDLE_INTERVALS, CANDLES_GROUP, HIGHER_CANDLE_INTERVALS, candle_asset_path
from dm_resources.resources import BinanceResource, MetadataResource, MongoResource
from dm_resources.settings import get_settings

HIGHER_INTERVALS = HIGHER_CANDLE_INTERVALS
INTERVALS = CANDLE_INTERVALS

# Measured in bench/bench_backfill.py (README): several partitions per run amortise run
# start-up (process launch, resource set-up) while keeping a failed run's blast radius small.
_PER_RUN = get_settings().backfill_partitions_per_run
BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=_PER_RUN) if _PER_RUN else BackfillPolicy.single_run()

CANDLE_FRESHNESS = FreshnessPolicy.time_window(
    fail_window=dt.timedelta(minutes=30), warn_window=dt.timedelta(minutes=10)
)


def candles_key(interval: str) -> AssetKey:
    return AssetKey(candle_asset_path(interval))


def _check_specs(interval: str) -> list[AssetCheckSpec]:
    key = candles_key(interval)
    return [
        AssetCheckSpec(name, asset=key, description=checks.CHECKS[name], blocking=name in checks.BLOCKING)
        for name in checks.check_names(interval)
    ]


_SEVERITY = {"WARN": AssetCheckSeverity.WARN, "ERROR": AssetCheckSeverity.ERROR, "OK": AssetCheckSeverity.WARN}


def _check_results(interval: str, results: Iterable[CheckResult]) -> list[AssetCheckResult]:
    """Dagster results: passed only when nothing was found; severity from the check's documented rule."""
    return [
        AssetCheckResult(
            check_name=r.name,
            asset_key=candles_key(interval),
            passed=r.passed,
            severity=_SEVERITY[r.severity],
            description=audit.message(r),
            metadata={k: _meta_value(v) for k, v in r.metadata().items()},
        )
        for r in results
    ]


def _meta_value(v: object) -> Any:
    return MetadataValue.json(v) if isinstance(v, list | dict) else v


def _merge(builds: list[build.DayBuild]) -> dict[str, Any]:
    """One materialization's metadata; a run may cover several partitions (backfill policy)."""
    total_sources: dict[str, int] = {}
    for b in builds:
        for k, v in b.by_source.items():
            total_sources[k] = total_sources.get(k, 0) + v
    meta: dict[str, object] = {
        "partitions": len(builds),
        "rows": sum(b.rows for b in builds),
        "expected": sum(b.expected for b in builds),
        "by_source": MetadataValue.json(total_sources),
        "missing": sum(len(b.missing) for b in builds),
        "confirmed_missing": sum(len(b.confirmed_missing) for b in builds),
        "upserted": sum(b.upserted for b in builds),
        "modified": sum(b.modified for b in builds),
    }
    rest = sum(b.rest_requests for b in builds)
    if rest:
        meta["rest_requests"] = rest
    errors = [f"{b.day}|{b.symbol}: {b.rest_error}" for b in builds if b.rest_error]
    if errors:
        meta["rest_errors"] = MetadataValue.text("\n".join(errors))
    flagged: dict[str, int] = {}
    for b in builds:
        for k, v in b.flagged.items():
            flagged[k] = flagged.get(k, 0) + v
    meta["flagged"] = MetadataValue.json(flagged)
    for name in ("detected", "repaired", "kept"):
        meta[name] = sum(len(getattr(b, name)) for b in builds)
    if any(b.provisional for b in builds):
        meta["provisional"] = sum(b.provisional for b in builds)
    if len(builds) == 1:
        meta["detail"] = MetadataValue.json(builds[0].as_metadata())
    return meta


def _run_checks(
    context: AssetExecutionContext,
    mongo: MongoResource,
    metadata: MetadataResource,
    interval: str,
    builds: list[build.DayBuild],
) -> list[AssetCheckResult]:
    """Checks over every partition this run touched, folded into one result per check.

    Failed checks also go to ``audit_logs`` and every partition's health row is refreshed
    from them here: a failing blocking check skips the quality assets downstream, and the
    health must drop all the same.
    """
    store, meta = mongo.get_store(), metadata.get_store()
    outcomes: dict[str, list[CheckResult]] = {}
    failed, health_rows = [], []
    run_id = context.run.run_id
    # Judge each partition as of its build's "now": a minute that closed after the build is not a gap yet.
    as_of = {(b.day, b.symbol): b.as_of for b in builds}
    for pk in context.partition_keys:
        day, symbol = split_key(pk)
        now = as_of.get((day, symbol))
        results = audit.check_partition(store, meta, symbol, day, interval, now=now)
        for outcome in results:
            outcomes.setdefault(outcome.name, []).append(outcome)
            if not outcome.passed:
                failed.append(
                    audit.to_audit_log(outcome, symbol=symbol, interval=interval, partition_key=str(pk), run_id=run_id)
                )
        health_rows.append(
            audit.health_metric(store, meta, symbol, day, interval, run_id=run_id, results=results, now=now)
        )
    meta.record_audit(failed)
    meta.upsert_health(health_rows)
    return _check_results(interval, [audit.fold(v) for v in outcomes.values()])


@asset(
    key=candles_key("1m"),
    partitions_def=DATE_SYMBOL_PARTITIONS,
    deps=[raw_key("klines"), raw_key("agg_trades")],
    group_name=CANDLES_GROUP,
    kinds={"mongodb", "pandas"},
    backfill_policy=BACKFILL_POLICY,
    check_specs=_check_specs("1m"),
    freshness_policy=CANDLE_FRESHNESS,
    tags={"dm/layer": "candles"},
    description=(
        "1-minute candles for one UTC day of one symbol, in MongoDB `candles` (interval 1m). Each minute comes "
        "from the exchange's closed kline, else from aggregated trades where their consecutive ids prove the "
        "minute complete, else from Binance REST; what the exchange itself lacks is recorded as confirmed "
        "missing after bounded attempts. The still-open minute is never stored. Idempotent."
    ),
)
def candles_1m(
    context: AssetExecutionContext, mongo: MongoResource, metadata: MetadataResource, binance: BinanceResource
) -> MaterializeResult:
    store, meta, client = mongo.get_store(), metadata.get_store(), binance.get_client()
    builds = []
    for pk in context.partition_keys:
        day, symbol = split_key(pk)
        b = build.build_1m_day(store, meta, client, symbol, day, run_id=context.run.run_id, now=run_time_ms(context))
        context.log.info(f"{pk}: {b.as_metadata()}")
        builds.append(b)
    return MaterializeResult(metadata=_merge(builds), check_results=_run_checks(context, mongo, metadata, "1m", builds))


def _higher_asset(interval: str) -> AssetsDefinition:
    @asset(
        key=candles_key(interval),
        partitions_def=DATE_SYMBOL_PARTITIONS,
        deps=[candles_key("1m")],
        group_name=CANDLES_GROUP,
        kinds={"mongodb", "pandas"},
        backfill_policy=BACKFILL_POLICY,
        check_specs=_check_specs(interval),
        freshness_policy=CANDLE_FRESHNESS,
        tags={"dm/layer": "candles"},
        description=(
            f"{interval} candles derived from the stored 1m candles with Binance's UTC bucket alignment "
            f"([open, open + {interval})): open of the first minute, max high, min low, close of the last, "
            "summed volumes and trades. A bucket is written only once each of its minutes is present or "
            "confirmed missing, so it equals the exchange's own kline."
        ),
    )
    def _candles(context: AssetExecutionContext, mongo: MongoResource, metadata: MetadataResource) -> MaterializeResult:
        store, meta = mongo.get_store(), metadata.get_store()
        builds = []
        for pk in context.partition_keys:
            day, symbol = split_key(pk)
            builds.append(build.build_higher_day(store, meta, symbol, day, interval, now=run_time_ms(context)))
        return MaterializeResult(
            metadata=_merge(builds), check_results=_run_checks(context, mongo, metadata, interval, builds)
        )

    return _candles


CANDLE_ASSETS = [candles_1m, *(_higher_asset(iv) for iv in HIGHER_INTERVALS)]
