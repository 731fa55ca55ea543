"""Audit checks over candle frames: gaps, duplicates, OHLC sanity, outlier jumps.

Pure functions returning a small ``CheckResult`` the glue turns into a Dagster
``AssetCheckResult`` and an ``audit_logs`` row. Each carries the number of offending
rows, up to ``MAX_SAMPLES`` offending open times (enough to find them, small enough
for metadata) and a severity from a rule documented on the function:

* ``OK``    — nothing found;
* ``WARN``  — worth a look, the data is usable (a few minutes the gap sensor will fill,
  byte-identical duplicate rows, a price jump that may be real);
* ``ERROR`` — the data is wrong or materially incomplete.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from dm_assets.candles.compute import FLOAT_COLUMNS, floor_time, group_into_ranges

MAX_SAMPLES = 20
Severity = Literal["OK", "WARN", "ERROR"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    severity: Severity
    count: int  # offending rows (minutes for gaps)
    checked: int  # rows (or expected minutes) examined
    samples: tuple[int, ...] = ()  # offending open times, ≤ MAX_SAMPLES, ascending
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """WARN passes: a check fails only on data that is wrong, so a blocking check is meaningful."""
        return self.severity != "ERROR"

    def metadata(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "checked": self.checked,
            "severity": self.severity,
            "samples": list(self.samples),
            **self.details,
        }


def _samples(open_times: np.ndarray) -> tuple[int, ...]:
    return tuple(int(x) for x in np.unique(np.asarray(open_times, dtype=np.int64))[:MAX_SAMPLES])


def find_gaps(
    open_times: Iterable[int] | np.ndarray,
    interval_ms: int,
    start: int,
    end: int,
    *,
    now_ms: int | None = None,
    confirmed_missing: Iterable[int] = (),
    warn_ratio: float = 0.01,
) -> CheckResult:
    """Closed buckets in ``[start, end)`` with no candle.

    Expected = aligned buckets in ``[start, min(end, floor(now)))`` (the still-open bucket is
    not due). Confirmed-missing buckets (exchange holes REST could not fill) are reported in
    ``details["confirmed_missing"]`` but do not count: no action can fix them, and a check
    that stays red forever teaches people to ignore it (the health score's completeness
    still counts them). Severity: OK when nothing is missing; WARN when missing ≤
    ``warn_ratio`` of expected (a few minutes, the gap sensor's job); ERROR above.
    """
    stop = end if now_ms is None else min(end, floor_time(now_ms, interval_ms))
    first = start + (-start) % interval_ms
    grid = np.arange(first, stop, interval_ms, dtype=np.int64) if stop > first else np.empty(0, np.int64)
    have = np.asarray(open_times if isinstance(open_times, np.ndarray) else list(open_times), dtype=np.int64)
    absent = grid[~np.isin(grid, have)]
    excused = np.fromiter(confirmed_missing, dtype=np.int64)
    excused_hit = absent[np.isin(absent, excused)] if excused.size else absent[:0]
    missing = absent[~np.isin(absent, excused_hit)] if excused_hit.size else absent
    ranges = group_into_ranges(missing, interval_ms)
    n = int(missing.size)
    if n == 0:
        severity: Severity = "OK"
    elif n <= warn_ratio * grid.size:
        severity = "WARN"
    else:
        severity = "ERROR"
    return CheckResult(
        name="gaps",
        severity=severity,
        count=n,
        checked=int(grid.size),
        samples=_samples(missing),
        details={
            "present": int(grid.size - absent.size),
            "confirmed_missing": int(excused_hit.size),
            "ranges": len(ranges),
            "longest_range": max(((e - s) // interval_ms for s, e in ranges), default=0),
            "range_samples": [[s, e] for s, e in ranges[:MAX_SAMPLES]],
        },
    )


def find_duplicates(df: pd.DataFrame, keys: Iterable[str] | None = None) -> CheckResult:
    """Rows sharing a key (default: whichever of symbol, interval, open_time are columns).

    ``count`` = surplus rows (rows − distinct keys). Identical duplicates (every candle value
    equal) are WARN — a double read, harmless once deduplicated; duplicates that disagree are
    ERROR — two versions of one candle, one of them wrong.
    """
    key_cols = list(keys) if keys is not None else [k for k in ("symbol", "interval", "open_time") if k in df]
    if df.empty:
        return CheckResult("duplicates", "OK", 0, 0)
    dup_mask = df.duplicated(key_cols, keep=False).to_numpy()
    surplus = int(df.duplicated(key_cols, keep="first").sum())
    if surplus == 0:
        return CheckResult("duplicates", "OK", 0, len(df))
    value_cols = [c for c in (*FLOAT_COLUMNS, "trades") if c in df]
    dups = df[dup_mask]
    distinct_versions = dups.drop_duplicates(key_cols + value_cols)
    conflicting_keys = distinct_versions[distinct_versions.duplicated(key_cols, keep=False)]
    conflicting = int(conflicting_keys.drop_duplicates(key_cols).shape[0])
    return CheckResult(
        name="duplicates",
        severity="ERROR" if conflicting else "WARN",
        count=surplus,
        checked=len(df),
        samples=_samples(dups["open_time"].to_numpy()) if "open_time" in dups else (),
        details={"duplicated_keys": int(dups.drop_duplicates(key_cols).shape[0]), "conflicting_keys": conflicting},
    )


def ohlc_violations(df: pd.DataFrame, *, interval_ms: int | None = None, rel_tol: float = 1e-9) -> CheckResult:
    """Rows breaking candle invariants; any is ERROR (a candle that cannot be true).

    Rules: values finite; low ≤ open ≤ high, low ≤ close ≤ high, low ≤ high; volume,
    quote_volume, taker_buy_* ≥ 0; taker_buy_volume ≤ volume and taker_buy_quote_volume ≤
    quote_volume (with ``rel_tol`` relative slack for float sums); with ``interval_ms``,
    close_time = open_time + interval − 1 and open_time aligned. ``count`` is rows with at
    least one violation; ``details`` counts per rule.
    """
    if df.empty:
        return CheckResult("ohlc", "OK", 0, 0)
    cols = {c: df[c].to_numpy(dtype=np.float64) for c in FLOAT_COLUMNS if c in df}
    o, h, lo, c = cols["open"], cols["high"], cols["low"], cols["close"]
    rules: dict[str, np.ndarray] = {
        "non_finite": ~np.all(np.isfinite(np.column_stack(list(cols.values()))), axis=1),
        "open_outside_range": (o < lo) | (o > h),
        "close_outside_range": (c < lo) | (c > h),
        "low_above_high": lo > h,
    }
    for v in ("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume"):
        if v in cols:
            rules[f"negative_{v}"] = cols[v] < 0
    for part, whole in (("taker_buy_volume", "volume"), ("taker_buy_quote_volume", "quote_volume")):
        if part in cols and whole in cols:
            rules[f"{part}_above_{whole}"] = cols[part] > cols[whole] * (1 + rel_tol)
    if "trades" in df:
        rules["negative_trades"] = df["trades"].to_numpy(dtype=np.float64) < 0
    if interval_ms is not None and "open_time" in df:
        ot = df["open_time"].to_numpy(dtype=np.int64)
        rules["misaligned_open_time"] = ot % interval_ms != 0
        if "close_time" in df:
            rules["wrong_close_time"] = df["close_time"].to_numpy(dtype=np.int64) != ot + interval_ms - 1
    bad = np.zeros(len(df), dtype=bool)
    for mask in rules.values():
        bad |= mask
    n = int(bad.sum())
    samples = _samples(df["open_time"].to_numpy()[bad]) if "open_time" in df else ()
    return CheckResult(
        name="ohlc",
        severity="ERROR" if n else "OK",
        count=n,
        checked=len(df),
        samples=samples,
        details={k: int(v.sum()) for k, v in rules.items() if v.any()},
    )


MAD_TO_SIGMA = 1.4826  # σ of a normal distribution = 1.4826 × MAD
MEAN_AD_TO_SIGMA = 1.2533  # σ of a normal distribution = 1.2533 × mean absolute deviation


def outlier_jumps(df: pd.DataFrame, z: float = 8.0, *, min_returns: int = 30) -> CheckResult:
    """Close-to-close log returns further than ``z`` robust standard deviations from their median.

    Robust σ = 1.4826 × MAD (median absolute deviation): one bad tick cannot inflate it the
    way it inflates a plain standard deviation, so it stays visible. When MAD is 0 (an
    illiquid market where most minutes do not move) σ falls back to 1.2533 × mean absolute
    deviation; when that is 0 too nothing moved and nothing is flagged. Returns span
    consecutive *present* rows (a gap makes one longer return). Fewer than ``min_returns``
    returns: too little to estimate σ, OK with ``details["insufficient"]``. Severity WARN:
    crypto does jump 8σ for real; this asks a human to look, it does not reject data.
    ``samples`` are the open times of the candles the jump lands on.
    """
    if df.empty or len(df) - 1 < min_returns:
        return CheckResult("outlier_jumps", "OK", 0, max(len(df) - 1, 0), details={"insufficient": True})
    d = df.sort_values("open_time", kind="stable")
    close = d["close"].to_numpy(dtype=np.float64)
    ot = d["open_time"].to_numpy(dtype=np.int64)
    valid = np.isfinite(close) & (close > 0)
    close, ot = close[valid], ot[valid]
    r = np.diff(np.log(close))
    if r.size < min_returns:
        return CheckResult("outlier_jumps", "OK", 0, int(r.size), details={"insufficient": True})
    med = float(np.median(r))
    dev = np.abs(r - med)
    sigma = MAD_TO_SIGMA * float(np.median(dev))
    if sigma == 0.0:
        sigma = MEAN_AD_TO_SIGMA * float(dev.mean())
    flags = np.zeros(r.size, dtype=bool) if sigma == 0.0 else dev > z * sigma
    n = int(flags.sum())
    return CheckResult(
        name="outlier_jumps",
        severity="WARN" if n else "OK",
        count=n,
        checked=int(r.size),
        samples=_samples(ot[1:][flags]),
        details={
            "z": z,
            "robust_sigma": sigma,
            "median_return": med,
            "max_abs_z": float(dev.max() / sigma) if sigma else 0.0,
        },
    )
