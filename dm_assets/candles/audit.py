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
from dm_assets.partitions import day_bounds_ms
from dm_resources.candle_store import CandleStore
from dm_resources.metadata.schemas import AuditLogIn, HealthMetricIn

if TYPE_CHECKING:
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.mongo import MongoStore

CheckOutcome = CheckResult

CHECK_DESCRIPTIONS: dict[str, str] = {
    "no_gaps": "Every closed bucket of the day has a candle, except holes the exchange itself has (confirmed missing).",
    "no_duplicates": "At most one candle per (symbol, interval, open_time).",
    "ohlc_sane": "low ≤ open, close ≤ high; volumes ≥ 0; taker buy ≤ total; close_time = open_time + interval − 1.",
    "no_outlier_jumps": "No close-to-close log return beyond 8 robust standard deviations (MAD-based).",
}

_SEVERITY_TO_LOG = {"OK": "INFO", "WARN": "WARN", "ERROR": "ERROR"}


def _read(store: MongoStore, symbol: str, interval: str, start: int, end: int) -> pd.DataFrame:
    docs = CandleStore(store).read_range(symbol, interval, start, end, projection={"_id": 0})
    return candles_frame(docs)


def check_partition(
    store: MongoStore, meta: MetadataStore, symbol: str, day: str, interval: str, *, now: int | None = None
) -> list[CheckResult]:
    """Every candle check for one (day, symbol, interval), named as the asset check specs."""
    now = now if now is not None else int(time.time() * 1000)
    start, end = day_bounds_ms(day)
    df = _read(store, symbol, interval, start, end)
    step = interval_ms(interval)
    confirmed = meta.confirmed_missing(symbol, "1m", start, end - 1) if interval == "1m" else set()
    results = [
        checks.find_gaps(df["open_time"].to_numpy(), step, start, end, now_ms=now, confirmed_missing=confirmed),
        checks.find_duplicates(df),
        checks.ohlc_violations(df, interval_ms=step),
        checks.outlier_jumps(df),
    ]
    names = list(CHECK_DESCRIPTIONS)
    return [_renamed(r, n) for r, n in zip(results, names, strict=True)]


def _renamed(r: CheckResult, name: str) -> CheckResult:
    return CheckResult(
        name=name, severity=r.severity, count=r.count, checked=r.checked, samples=r.samples, details=dict(r.details)
    )


def fold(results: Sequence[CheckResult]) -> CheckResult:
    """One result for several partitions: the worst severity, counts added up."""
    order = {"OK": 0, "WARN": 1, "ERROR": 2}
    worst = max(results, key=lambda r: order[r.severity])
    samples = tuple(sorted({s for r in results for s in r.samples}))[: checks.MAX_SAMPLES]
    return CheckResult(
        name=worst.name,
        severity=worst.severity,
        count=sum(r.count for r in results),
        checked=sum(r.checked for r in results),
        samples=samples,
        details={"partitions": len(results)} if len(results) > 1 else dict(worst.details),
    )


def message(r: CheckResult) -> str:
    if r.severity == "OK":
        return f"{r.name}: ok ({r.checked} checked)"
    return f"{r.name}: {r.count} of {r.checked} offending; first at {list(r.samples[:5])}"


def to_audit_log(r: CheckResult, *, symbol: str, interval: str, partition_key: str, run_id: str | None) -> AuditLogIn:
    from dm_assets.candles.assets import candles_key

    return AuditLogIn(
        check_name=r.name,
        severity=_SEVERITY_TO_LOG[r.severity],
        passed=r.passed,
        message=message(r),
        details=r.metadata(),
        asset_key=candles_key(interval).to_user_string(),
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
) -> HealthMetricIn:
    """The day's health of one symbol × interval, on the 0–100 scale of ``health_metrics``."""
    now = now if now is not None else int(time.time() * 1000)
    start, end = day_bounds_ms(day)
    df = _read(store, symbol, interval, start, end)
    h = health.day_health(df, start, now, interval_ms(interval))
    import datetime as dt

    return HealthMetricIn(
        symbol=symbol,
        interval=interval,
        day=dt.date.fromisoformat(day),
        completeness=round(100 * h.completeness, 4),
        freshness=round(100 * h.freshness, 4),
        consistency=round(100 * h.consistency, 4),
        score=h.score,
        details={"rows": len(df), "weights": dict(health.WEIGHTS)},
        run_id=run_id,
    )
