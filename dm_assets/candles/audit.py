"""Audit glue: read a partition's candles from the store, run the pure checks, score health.

Shared by the candle assets (as Dagster asset checks), the audit_results asset (as
``audit_logs`` rows) and the health_scores asset (as ``health_metrics`` rows), so all
three judge the same data by the same rules.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from dm_assets.candles import checks, health
from dm_assets.candles.checks import CheckResult
from dm_assets.candles.compute import candles_frame, interval_ms
from dm_assets.candles.integrity import thresholds_for
from dm_assets.partitions import day_bounds_ms
from dm_resources.candle_store import CandleStore
from dm_resources.contracts import candle_asset_path
from dm_resources.metadata.schemas import AuditLogIn, HealthMetricIn

if TYPE_CHECKING:
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.mongo import MongoStore


# The asset check specs, named and described as the pure checks (dm_assets/candles/checks.py).
CHECK_DESCRIPTIONS: dict[str, str] = dict(checks.CHECKS)

_SEVERITY_TO_LOG = {"OK": "INFO", "WARN": "WARN", "ERROR": "ERROR"}


def _read(store: MongoStore, symbol: str, interval: str, start: int, end: int) -> pd.DataFrame:
    docs = CandleStore(store).read_range(symbol, interval, start, end, projection={"_id": 0})
    return candles_frame(docs)


def excused_buckets(meta: MetadataStore, symbol: str, interval: str, start: int, end: int) -> set[int]:
    """Buckets the exchange itself has no data for: confirmed-missing minutes (1m), or, for a
    higher interval, buckets all of whose minutes the exchange answered it does not have."""
    if interval == "1m":
        return meta.confirmed_missing(symbol, "1m", start, end - 1)
    from dm_assets.candles.build import exchange_missing

    confirmed, pending = exchange_missing(meta, symbol, start, end)
    step = interval_ms(interval)
    per = step // 60_000
    counts: dict[int, int] = {}
    for t in confirmed | pending:
        counts[t - t % step] = counts.get(t - t % step, 0) + 1
    return {b for b, c in counts.items() if c >= per}


def check_frame(
    df: pd.DataFrame,
    symbol: str,
    interval: str,
    start: int,
    end: int,
    *,
    now: int,
    excused: set[int] | frozenset[int] = frozenset(),
) -> list[CheckResult]:
    """Every check of ``interval`` over one day's stored candles, in ``checks.check_names`` order."""
    th = thresholds_for(symbol)
    step = interval_ms(interval)
    out = [
        checks.no_gaps(df["open_time"].to_numpy(), step, start, end, now_ms=now, confirmed_missing=excused, th=th),
        checks.no_duplicates(df),
        checks.ohlc_sane(df, interval_ms=step),
        checks.no_bad_prints(df, step, th),
    ]
    if interval == "1m":
        out.append(checks.sources_agree(df))
    return out


def check_partition(
    store: MongoStore, meta: MetadataStore, symbol: str, day: str, interval: str, *, now: int | None = None
) -> list[CheckResult]:
    """Every candle check for one (day, symbol, interval), named as the asset check specs."""
    now = now if now is not None else int(time.time() * 1000)
    start, end = day_bounds_ms(day)
    df = _read(store, symbol, interval, start, end)
    return check_frame(
        df, symbol, interval, start, end, now=now, excused=excused_buckets(meta, symbol, interval, start, end)
    )


def fold(results: Sequence[CheckResult]) -> CheckResult:
    """One result for several partitions: the worst severity, counts added up."""
    order = {"OK": 0, "WARN": 1, "ERROR": 2}
    worst = max(results, key=lambda r: order[r.severity])
    if len(results) == 1:
        return worst
    samples = tuple(sorted({s for r in results for s in r.samples}))[: checks.MAX_SAMPLES]
    return CheckResult(
        name=worst.name,
        severity=worst.severity,
        count=sum(r.count for r in results),
        checked=sum(r.checked for r in results),
        samples=samples,
        details={"partitions": len(results), "failed_partitions": sum(1 for r in results if not r.passed)},
        rows=tuple(row for r in results for row in r.rows)[: checks.MAX_ROWS],
    )


def message(r: CheckResult) -> str:
    if r.passed:
        return f"{r.name}: ok ({r.checked} checked)"
    first = ", ".join(checks._iso(t) for t in r.samples[:5])
    return f"{r.name}: {r.severity} — {r.count} of {r.checked} offending; first at {first}"


def to_audit_log(r: CheckResult, *, symbol: str, interval: str, partition_key: str, run_id: str | None) -> AuditLogIn:
    return AuditLogIn(
        check_name=r.name,
        severity=_SEVERITY_TO_LOG[r.severity],
        passed=r.passed,
        message=message(r),
        details=r.metadata(),
        asset_key="/".join(candle_asset_path(interval)),
        partition_key=partition_key,
        symbol=symbol,
        interval=interval,
        run_id=run_id,
    )


def health_metric(
    store: MongoStore,
    meta: MetadataStore,
    symbol: str,
    day: str,
    interval: str,
    *,
    run_id: str | None = None,
    now: int | None = None,
    results: Sequence[CheckResult] | None = None,
) -> HealthMetricIn:
    """The day's health of one symbol × interval on the 0–100 scale of ``health_metrics``, from the checks."""
    import datetime as dt

    now = now if now is not None else int(time.time() * 1000)
    start, end = day_bounds_ms(day)
    df = _read(store, symbol, interval, start, end)
    if results is None:
        results = check_frame(
            df, symbol, interval, start, end, now=now, excused=excused_buckets(meta, symbol, interval, start, end)
        )
    h = health.day_health(df, start, now, interval_ms(interval), results)
    return HealthMetricIn(
        symbol=symbol,
        interval=interval,
        day=dt.date.fromisoformat(day),
        completeness=round(100 * h.completeness, 4),
        freshness=round(100 * h.freshness, 4),
        consistency=round(100 * h.consistency, 4),
        score=h.score,
        details=h.details,
        run_id=run_id,
    )
