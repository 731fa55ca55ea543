"""Audit glue: read a partition's candles from the store, run the pure checks, score health.

Shared by the candle assets (as Dagster asset checks), the audit_results asset (as
``audit_logs`` rows) and the health_scores asset (as ``health_metrics`` rows), so all
three judge the same data by the same rules.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dm_assets.candles import checks, health
from dm_assets.candles.checks import CheckResult
from dm_assets.candles.compute import candles_frame, interval_ms
from dm_assets.candles.integrity import BadPrints, detect_bad_prints_many, thresholds_for
from dm_assets.partitions import day_bounds_ms
from dm_resources.candle_store import CandleStore
from dm_resources.contracts import CANDLE_INTERVALS, candle_asset_path
from dm_resources.metadata.schemas import AuditLogIn, AuditLogRecord, HealthMetricIn, HealthMetricRecord

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
    return excused_from(interval, confirmed, pending)


def excused_from(interval: str, confirmed: set[int], pending: set[int]) -> set[int]:
    """:func:`excused_buckets` from the minutes the exchange answered it lacks (confirmed, or asked once)."""
    if interval == "1m":
        return set(confirmed)
    step = interval_ms(interval)
    per = step // 60_000
    counts: dict[int, int] = {}
    for t in confirmed | pending:
        counts[t - t % step] = counts.get(t - t % step, 0) + 1
    return {b for b, c in counts.items() if c >= per}


def refused_archive_files(meta: MetadataStore, symbol: str, start: int, end: int) -> tuple[list[dict[str, str]], int]:
    """(refused files covering ``[start, end)`` as last fetched, files consulted) from ``archive_files``."""
    from dm_resources.metadata.archive import archive_files

    rows = archive_files(meta, symbol, start, end)
    return [{"file": r.name, "reason": r.reason or ""} for r in rows if r.status == "refused"], len(rows)


def check_frame(
    df: pd.DataFrame,
    symbol: str,
    interval: str,
    start: int,
    end: int,
    *,
    now: int,
    excused: set[int] | frozenset[int] = frozenset(),
    archive_refused: Sequence[Mapping[str, Any]] = (),
    archive_consulted: int = 0,
    prints: BadPrints | None = None,
) -> list[CheckResult]:
    """Every check of ``interval`` over one day's stored candles, in ``checks.check_names`` order.

    ``prints``: a bad-print detection already run on exactly this frame (the build's screening).
    """
    th = thresholds_for(symbol)
    step = interval_ms(interval)
    out = [
        checks.no_gaps(df["open_time"].to_numpy(), step, start, end, now_ms=now, confirmed_missing=excused, th=th),
        checks.no_duplicates(df),
        checks.ohlc_sane(df, interval_ms=step),
        checks.no_bad_prints(df, step, th, found=prints),
    ]
    if interval == "1m":
        out.append(checks.sources_agree(df))
        out.append(checks.archive_files_accepted(archive_refused, archive_consulted))
    return out


def check_days(
    frames: Sequence[pd.DataFrame],
    symbol: str,
    interval: str,
    bounds: Sequence[tuple[int, int]],
    *,
    now: int,
    excused: Sequence[set[int]],
    archive: Sequence[tuple[Sequence[Mapping[str, Any]], int]] | None = None,
    prints: Sequence[BadPrints | None] | None = None,
) -> list[list[CheckResult]]:
    """:func:`check_frame` for many days of one symbol and interval (a run's chunk), same results.

    The row-wise checks (OHLC sanity, sources) run once over all the days' rows, and a day is
    looked at alone only where they found something (most days: nowhere), so a day of 4h candles
    does not pay pandas' per-call cost six times over. Bad prints and gaps are judged per day,
    as always (their windows never cross a day).
    """
    th = thresholds_for(symbol)
    step = interval_ms(interval)
    n = len(frames)
    sizes = [len(f) for f in frames]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    parts = [f for f in frames if len(f)]
    whole = pd.concat(parts, ignore_index=True) if len(parts) > 1 else (parts[0] if parts else None)
    bad = np.zeros(int(offsets[-1]), dtype=bool)
    disagree = np.zeros(int(offsets[-1]), dtype=bool)
    if whole is not None:
        for mask in checks.ohlc_rules(whole, interval_ms=step).values():
            bad |= mask
        if interval == "1m":
            disagree = checks._flag_mask(whole, checks.FLAG_DISAGREE)
    # Bad prints of every day in one pass (a day of 5m…1h candles is a few hundred rows: the
    # detector's per-call cost dominated), except where the build's screening is passed in.
    found: list[BadPrints | None] = list(prints) if prints is not None else [None] * n
    todo = [i for i in range(n) if found[i] is None and len(frames[i])]
    for i, b in zip(todo, detect_bad_prints_many([frames[i] for i in todo], step, th), strict=True):
        found[i] = b
    out: list[list[CheckResult]] = []
    for i in range(n):
        df, (start, end) = frames[i], bounds[i]
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        ot = df["open_time"].to_numpy(dtype=np.int64)
        ascending = ot.size < 2 or bool(np.all(np.diff(ot) > 0))
        results = [
            checks.no_gaps(ot, step, start, end, now_ms=now, confirmed_missing=excused[i], th=th),
            checks.CheckResult("no_duplicates", "OK", 0, len(df)) if ascending else checks.no_duplicates(df),
            checks.ohlc_sane(df, interval_ms=step)
            if bad[lo:hi].any()
            else checks.CheckResult("ohlc_sane", "OK", 0, len(df)),
            checks.no_bad_prints(df, step, th, found=found[i]),
        ]
        if interval == "1m":
            results.append(
                checks.sources_agree(df)
                if disagree[lo:hi].any()
                else checks.CheckResult("sources_agree", "OK", 0, len(df))
            )
            refused, consulted = archive[i] if archive is not None else ((), 0)
            results.append(checks.archive_files_accepted(refused, consulted))
        out.append(results)
    return out


def check_partition(
    store: MongoStore, meta: MetadataStore, symbol: str, day: str, interval: str, *, now: int | None = None
) -> list[CheckResult]:
    """Every candle check for one (day, symbol, interval), named as the asset check specs."""
    now = now if now is not None else int(time.time() * 1000)
    start, end = day_bounds_ms(day)
    df = _read(store, symbol, interval, start, end)
    refused, consulted = refused_archive_files(meta, symbol, start, end) if interval == "1m" else ([], 0)
    return check_frame(
        df,
        symbol,
        interval,
        start,
        end,
        now=now,
        excused=excused_buckets(meta, symbol, interval, start, end),
        archive_refused=refused,
        archive_consulted=consulted,
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
    if r.details.get("refused"):
        files = "; ".join(f"{f['file']}: {f['reason']}" for f in r.details["refused"])
        return f"{r.name}: {r.severity} — {r.count} archive file(s) refused: {files}"
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


# -- the quality assets reuse the candle step's outcomes ------------------------------------------


def partition_audit(
    store: MongoStore, meta: MetadataStore, partition_keys: Sequence[str], run_id: str, *, now: int
) -> tuple[list[AuditLogIn | AuditLogRecord], int]:
    """The failing check outcomes of the run's partitions × intervals, and how many rows this call wrote.

    The candle step evaluated the checks once per partition and interval and recorded every
    outcome under its run id; those rows are reused (only the failing ones are read whole, the
    rest are counted as done). Only (partition, interval) pairs it did not evaluate in this run (a
    run of the quality assets alone, an interval not selected) are checked here against the
    stored candles, and written.
    """
    from dm_assets.partitions import split_key

    keys = [str(pk) for pk in partition_keys]
    wanted = set(keys)
    done = meta.audited(run_id)
    failed: list[AuditLogIn | AuditLogRecord] = [
        r
        for r in meta.audit_logs(run_id=run_id, passed=False, limit=1_000_000)
        if r.partition_key in wanted and r.interval and not (r.details or {}).get("event")
    ]
    fresh: list[AuditLogIn] = []
    for pk in keys:
        day, symbol = split_key(pk)
        for interval in CANDLE_INTERVALS:
            if (pk, interval) in done:
                continue
            fresh.extend(
                to_audit_log(o, symbol=symbol, interval=interval, partition_key=pk, run_id=run_id)
                for o in check_partition(store, meta, symbol, day, interval, now=now)
            )
    failed.extend(r for r in fresh if not r.passed)
    return failed, meta.record_audit(fresh)


def partition_health(
    store: MongoStore, meta: MetadataStore, partition_keys: Sequence[str], run_id: str, *, now: int
) -> list[HealthMetricIn | HealthMetricRecord]:
    """The health rows of the run's partitions × intervals: the candle step's, else scored here (and written)."""
    from dm_assets.partitions import split_key

    keys = [str(pk) for pk in partition_keys]
    pairs = [split_key(pk) for pk in keys]
    days = sorted({dt.date.fromisoformat(d) for d, _ in pairs})
    done: dict[tuple[str, str, str], HealthMetricIn | HealthMetricRecord] = {}
    if days:
        for h in meta.health(day_from=days[0], day_to=days[-1], run_id=run_id):
            done[(h.day.isoformat(), h.symbol, h.interval)] = h
    rows: list[HealthMetricIn | HealthMetricRecord] = []
    fresh: list[HealthMetricIn] = []
    for day, symbol in pairs:
        for interval in CANDLE_INTERVALS:
            hit = done.get((day, symbol, interval))
            if hit is not None:
                rows.append(hit)
                continue
            new = health_metric(store, meta, symbol, day, interval, run_id=run_id, now=now)
            fresh.append(new)
            rows.append(new)
    meta.upsert_health(fresh)
    return rows
