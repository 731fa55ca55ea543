"""Health score of one (day, symbol, interval) of candles: completeness, freshness, consistency.

score = 100 × (0.5·completeness + 0.2·freshness + 0.3·consistency), rounded to 2 decimals.

Why these weights: completeness dominates because a hole silently biases everything
computed over the day (volume, volatility, VWAP); consistency next because a wrong candle
is worse than a late one for a reader who cannot tell; freshness last because lateness is
visible (``close_time``) and usually heals by itself.

* completeness = present / expected over the day's *closed* buckets (the still-open one is
  not due). Confirmed-missing exchange holes count against it: a reader over that day sees
  the hole whoever caused it. They do not count against consistency (nothing is wrong in
  what is stored) nor fail the gaps check (nothing can be done).
* freshness = f(lag in intervals), lag = min(now, day end) − end of the last candle
  (``close_time + 1``; the day start if there is none): 1.0 while lag ≤ 2 intervals, falling
  linearly to 0.0 at 60 intervals. Clipping ``now`` to the day end makes a complete past day
  exactly 1.0 and a past day whose last hours are missing stale, whenever it is audited.
* consistency is computed from the **check outcomes** (the same results the asset checks
  report): every offending row of a failed check costs its check's weight in rows,
  ``consistency = max(0, 1 − Σ weight × count / rows)``, with weights (``CONSISTENCY_WEIGHTS``)
  ``ohlc_sane`` 10, ``no_bad_prints`` 10, ``no_duplicates`` 10 (identical copies 1),
  ``sources_agree`` 5; a finding REST confirmed (kept, flag ``verified``) costs half. Why
  ×10: one wrong price spoils every aggregate that contains it (the 5m…1d candles, the
  day's volatility and VWAP), so a single bad print must show, not vanish as 1/1440.
  1.0 with no rows (nothing stored is wrong; completeness already says 0).

The score is floored (not rounded) to 2 decimals, so anything wrong scores below 100, and
``details`` says why: each failed check with its count, severity and penalty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dm_assets.candles.checks import CheckResult, no_bad_prints, no_duplicates, ohlc_sane
from dm_assets.candles.compute import DAY_MS, MINUTE_MS, floor_time

WEIGHTS: Mapping[str, float] = {"completeness": 0.5, "freshness": 0.2, "consistency": 0.3}
FRESH_INTERVALS = 2.0
STALE_INTERVALS = 60.0
# Rows of penalty per offending row of a failed check (see the module docstring).
CONSISTENCY_WEIGHTS: Mapping[str, float] = {
    "ohlc_sane": 10.0,
    "no_bad_prints": 10.0,
    "no_duplicates": 10.0,
    "sources_agree": 5.0,
}
IDENTICAL_DUPLICATE_WEIGHT = 1.0
KEPT_FACTOR = 0.5


@dataclass(frozen=True)
class HealthScore:
    completeness: float
    freshness: float
    consistency: float
    score: float  # 0–100, floored to 2 decimals
    details: dict[str, Any] = field(default_factory=dict)


def expected_buckets(day_start_ms: int, now_ms: int, interval_ms: int = MINUTE_MS, day_ms: int = DAY_MS) -> int:
    """Closed buckets of the day so far: a past day all, today those before the open one, a future day 0."""
    stop = min(day_start_ms + day_ms, floor_time(now_ms, interval_ms))
    return max(0, (stop - day_start_ms) // interval_ms)


def completeness(present: int, expected: int) -> float:
    """present / expected, capped at 1; 1.0 when nothing is due yet."""
    if expected <= 0:
        return 1.0
    return min(1.0, max(0, present) / expected)


def freshness(
    last_close_time: int | None,
    now_ms: int,
    interval_ms: int = MINUTE_MS,
    *,
    day_start_ms: int | None = None,
    day_end_ms: int | None = None,
    fresh_intervals: float = FRESH_INTERVALS,
    stale_intervals: float = STALE_INTERVALS,
) -> float:
    """1.0 for lag ≤ ``fresh_intervals``, linear to 0.0 at ``stale_intervals`` (see module doc)."""
    ref = last_close_time + 1 if last_close_time is not None else day_start_ms
    if ref is None:
        return 0.0
    at = now_ms if day_end_ms is None else min(now_ms, day_end_ms)
    lag = max(0.0, (at - ref) / interval_ms)
    if lag <= fresh_intervals:
        return 1.0
    if lag >= stale_intervals:
        return 0.0
    return (stale_intervals - lag) / (stale_intervals - fresh_intervals)


def consistency(rows: int, duplicate_rows: int, violation_rows: int) -> float:
    """Unweighted form: 1 − offending / rows (kept for callers that only count rows)."""
    if rows <= 0:
        return 1.0
    return max(0.0, 1.0 - (duplicate_rows + violation_rows) / rows)


def check_penalty(r: CheckResult) -> float:
    """Rows of penalty a failed check costs (0 for a passed one or a check that does not judge values)."""
    if r.passed or r.name not in CONSISTENCY_WEIGHTS:
        return 0.0
    if r.name == "no_duplicates" and not r.details.get("conflicting_keys"):
        return IDENTICAL_DUPLICATE_WEIGHT * r.count
    kept = int(r.details.get("verified_kept", 0))
    return CONSISTENCY_WEIGHTS[r.name] * ((r.count - kept) + KEPT_FACTOR * kept)


def consistency_from_checks(rows: int, results: Sequence[CheckResult]) -> tuple[float, dict[str, Any]]:
    """Consistency from check outcomes, and the reasons (failed checks with counts and penalties)."""
    reasons: dict[str, dict[str, Any]] = {
        r.name: {
            "count": r.count,
            "severity": r.severity,
            "penalty_rows": check_penalty(r),
            "first": list(r.samples[:3]),
        }
        for r in results
        if not r.passed and r.name in CONSISTENCY_WEIGHTS
    }
    if rows <= 0:
        return 1.0, reasons
    penalty = sum(v["penalty_rows"] for v in reasons.values())
    return max(0.0, 1.0 - penalty / rows), reasons


def health_score(
    completeness_value: float,
    freshness_value: float,
    consistency_value: float,
    weights: Mapping[str, float] = WEIGHTS,
) -> HealthScore:
    """Weighted mean of the three components ×100, floored to 2 decimals (never 100 unless all are 1)."""
    parts = {"completeness": completeness_value, "freshness": freshness_value, "consistency": consistency_value}
    total = sum(weights.values())
    mean = sum(weights[k] * v for k, v in parts.items()) / total
    score = math.floor(round(100.0 * mean, 9) * 100) / 100
    return HealthScore(completeness_value, freshness_value, consistency_value, score)


def day_health(
    candles: pd.DataFrame,
    day_start_ms: int,
    now_ms: int,
    interval_ms: int = MINUTE_MS,
    results: Sequence[CheckResult] | None = None,
) -> HealthScore:
    """Health of one day of one interval from its stored candles and its check outcomes.

    ``results`` are the partition's check results (``audit.check_partition``); without them
    the value checks (duplicates, OHLC, bad prints) are run here. Confirmed holes count as
    absent for completeness.
    """
    day_end = day_start_ms + DAY_MS
    expected = expected_buckets(day_start_ms, now_ms, interval_ms)
    ot = candles["open_time"].to_numpy(dtype=np.int64) if not candles.empty else np.empty(0, np.int64)
    due_until = day_start_ms + expected * interval_ms
    in_day = (ot >= day_start_ms) & (ot < due_until) & (ot % interval_ms == 0)
    present = int(np.unique(ot[in_day]).size)
    day_mask = (ot >= day_start_ms) & (ot < day_end)
    day_rows = candles[day_mask] if not candles.empty else candles
    last_close = int(ot[day_mask].max()) + interval_ms - 1 if day_mask.any() else None
    if results is None:
        results = [no_duplicates(day_rows), ohlc_sane(day_rows), no_bad_prints(day_rows, interval_ms)]
    cons, reasons = consistency_from_checks(len(day_rows), results)
    h = health_score(
        completeness(present, expected),
        freshness(last_close, now_ms, interval_ms, day_start_ms=day_start_ms, day_end_ms=day_end),
        cons,
    )
    details = {
        "rows": len(day_rows),
        "expected": expected,
        "present": present,
        "weights": dict(WEIGHTS),
        "consistency_weights": dict(CONSISTENCY_WEIGHTS),
        "failed_checks": reasons,
    }
    return HealthScore(h.completeness, h.freshness, h.consistency, h.score, details)
