"""Candle checks: a check passes only when it found nothing.

Pure functions over a candle frame returning a ``CheckResult`` that the glue turns into a
Dagster ``AssetCheckResult`` (and, when it fails, an ``audit_logs`` row). Each result
carries the number of offending rows, up to ``MAX_SAMPLES`` offending open times, the
first offending rows in full, and a severity by the rule on its function:

* ``OK``    — nothing found: the only passing result;
* ``WARN``  — found something that does not make what is stored wrong, or that was
  verified against the exchange and kept (flag ``verified``): fails, visible, not blocking;
* ``ERROR`` — stored data is wrong or materially incomplete. On a *blocking* check
  (``BLOCKING``) Dagster then skips everything downstream in the run (higher intervals,
  analytics, quality) until a repair run makes it pass.

Every check has its final name here (``CHECKS``); the asset check specs use these names.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from dm_assets.candles.compute import FLOAT_COLUMNS, floor_time, group_into_ranges
from dm_assets.candles.integrity import (
    DEFAULT_THRESHOLDS,
    FLAG_BAD_PRINT,
    FLAG_DISAGREE,
    FLAG_VERIFIED,
    BadPrints,
    Thresholds,
    detect_bad_prints,
)

MAX_SAMPLES = 20
MAX_ROWS = 5
Severity = Literal["OK", "WARN", "ERROR"]

CHECKS: dict[str, str] = {
    "no_gaps": (
        "Every closed bucket of the day has a candle, except holes the exchange itself has (confirmed missing). "
        "WARN up to 1 % of the due buckets missing (the gap sensor fills them), ERROR above. Not blocking."
    ),
    "no_duplicates": (
        "At most one candle per (symbol, interval, open_time). Identical copies WARN, differing copies ERROR. Blocking."
    ),
    "ohlc_sane": (
        "Finite prices with low ≤ open, close ≤ high; volumes ≥ 0; taker buy ≤ total; "
        "close_time = open_time + interval − 1. ERROR (WARN when REST confirmed the row). Blocking."
    ),
    "no_bad_prints": (
        "No bad print or spike: no reverting cross-minute excursion beyond 12 robust σ and no wick beyond 10× "
        "the local scale (dm_assets/candles/integrity.py). ERROR until repaired from REST; WARN when REST "
        "confirmed the value (kept, flagged). Blocking."
    ),
    "sources_agree": (
        "Where a minute exists from more than one source (websocket kline, REST kline, archive file, aggregated "
        "trades proven complete) the versions agree within the documented tolerance. ERROR until repaired; WARN "
        "when kept. Blocking."
    ),
    "archive_files_accepted": (
        "Every Binance archive file covering the day, when last fetched, was accepted whole (checksum, zip, rows, "
        "symbol, period, time unit). A refused file names itself and the reason; nothing from it is stored and the "
        "day's minutes come from REST, so WARN, not blocking; a later run fetches the file again."
    ),
}
# Failing these makes downstream (higher intervals, analytics, health) wrong.
BLOCKING = frozenset({"no_duplicates", "ohlc_sane", "no_bad_prints", "sources_agree"})
# sources_agree needs the raw sources, and archive files are 1m files: only the 1m build reads them.
ONLY_1M = frozenset({"sources_agree", "archive_files_accepted"})
CHECKS_BY_INTERVAL_1M = tuple(CHECKS)
CHECKS_HIGHER = tuple(c for c in CHECKS if c not in ONLY_1M)


def check_names(interval: str) -> tuple[str, ...]:
    return CHECKS_BY_INTERVAL_1M if interval == "1m" else CHECKS_HIGHER


@dataclass(frozen=True)
class CheckResult:
    name: str
    severity: Severity
    count: int  # offending rows (minutes for gaps); 0 ⇔ passed
    checked: int  # rows (or expected buckets) examined
    samples: tuple[int, ...] = ()  # offending open times, ≤ MAX_SAMPLES, ascending
    details: dict[str, Any] = field(default_factory=dict)
    rows: tuple[dict[str, Any], ...] = ()  # the first offending rows, in full

    def __post_init__(self) -> None:
        if (self.count == 0) != (self.severity == "OK"):
            raise ValueError(f"{self.name}: severity {self.severity} with count {self.count}")

    @property
    def passed(self) -> bool:
        """Found nothing. A WARN is a failure too: it says how bad, not whether."""
        return self.count == 0

    @property
    def blocking(self) -> bool:
        return self.name in BLOCKING

    def metadata(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "checked": self.checked,
            "severity": self.severity,
            "samples": list(self.samples),
            "first_rows": list(self.rows),
            **self.details,
        }


def _iso(t: int) -> str:
    return dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M")


def _samples(open_times: np.ndarray) -> tuple[int, ...]:
    return tuple(int(x) for x in np.unique(np.asarray(open_times, dtype=np.int64))[:MAX_SAMPLES])


def _first_rows(df: pd.DataFrame, mask: np.ndarray) -> tuple[dict[str, Any], ...]:
    cols = [c for c in ("open_time", "open", "high", "low", "close", "volume", "source", "flags") if c in df]
    out = []
    for _, r in df.loc[mask, cols].head(MAX_ROWS).iterrows():
        row = {c: (r[c].item() if hasattr(r[c], "item") else r[c]) for c in cols}
        if isinstance(row.get("flags"), np.ndarray):
            row["flags"] = list(row["flags"])
        row["time"] = _iso(int(r["open_time"]))
        out.append(row)
    return tuple(out)


_SEQUENCES = (list, tuple, np.ndarray)  # built once: a ``list | tuple`` union per row cost 4 µs a row


def _flags(df: pd.DataFrame) -> list[list[str]]:
    if "flags" not in df:
        return [[] for _ in range(len(df))]
    return [list(f) if isinstance(f, _SEQUENCES) and len(f) else [] for f in df["flags"].tolist()]


def _flag_mask(df: pd.DataFrame, flag: str) -> np.ndarray:
    """Rows whose flags hold ``flag`` (most days have no flags at all: one pass, no lists built)."""
    if "flags" not in df:
        return np.zeros(len(df), dtype=bool)
    return np.fromiter(
        (isinstance(f, _SEQUENCES) and len(f) > 0 and flag in f for f in df["flags"].tolist()),
        dtype=bool,
        count=len(df),
    )


def _verified_mask(df: pd.DataFrame) -> np.ndarray:
    return _flag_mask(df, FLAG_VERIFIED)


def _finding(name: str, df: pd.DataFrame, mask: np.ndarray, details: dict[str, Any]) -> CheckResult:
    """A row-level finding: ERROR while any offending row is unverified, WARN when REST confirmed all."""
    n = int(mask.sum())
    if n == 0:
        return CheckResult(name, "OK", 0, len(df), details=details)
    verified = _verified_mask(df) & mask
    severity: Severity = "WARN" if int(verified.sum()) == n else "ERROR"
    return CheckResult(
        name,
        severity,
        n,
        len(df),
        samples=_samples(df["open_time"].to_numpy()[mask]),
        details={**details, "verified_kept": int(verified.sum()), "unresolved": n - int(verified.sum())},
        rows=_first_rows(df, mask),
    )


def no_gaps(
    open_times: Iterable[int] | np.ndarray,
    interval_ms: int,
    start: int,
    end: int,
    *,
    now_ms: int | None = None,
    confirmed_missing: Iterable[int] = (),
    th: Thresholds = DEFAULT_THRESHOLDS,
) -> CheckResult:
    """Closed buckets in ``[start, end)`` with no candle.

    Expected = aligned buckets in ``[start, min(end, floor(now)))`` (the still-open bucket is
    not due). Confirmed-missing buckets (exchange holes REST could not fill) are reported in
    ``details["confirmed_missing"]`` but do not count: no action can fix them. Severity:
    WARN when missing ≤ ``gap_error_ratio`` (1 %) of expected, ERROR above.
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
    severity: Severity = "OK" if n == 0 else "WARN" if n <= th.gap_error_ratio * grid.size else "ERROR"
    return CheckResult(
        name="no_gaps",
        severity=severity,
        count=n,
        checked=int(grid.size),
        samples=_samples(missing),
        details={
            "present": int(grid.size - absent.size),
            "confirmed_missing": int(excused_hit.size),
            "ranges": len(ranges),
            "longest_range": max(((e - s) // interval_ms for s, e in ranges), default=0),
            "first_ranges": [f"{_iso(s)}–{_iso(e)}" for s, e in ranges[:MAX_ROWS]],
        },
    )


def no_duplicates(df: pd.DataFrame, keys: Iterable[str] | None = None) -> CheckResult:
    """Rows sharing a key (default: whichever of symbol, interval, open_time are columns).

    ``count`` = surplus rows (rows − distinct keys). Identical duplicates (every candle value
    equal) are WARN — harmless once deduplicated; duplicates that disagree are ERROR — two
    versions of one candle, one of them wrong.
    """
    key_cols = list(keys) if keys is not None else [k for k in ("symbol", "interval", "open_time") if k in df]
    if df.empty:
        return CheckResult("no_duplicates", "OK", 0, 0)
    if key_cols == ["open_time"] or (keys is None and "open_time" in key_cols and len(df) > 1):
        ot = df["open_time"].to_numpy(dtype=np.int64)
        others = [k for k in key_cols if k != "open_time"]
        if bool(np.all(np.diff(ot) > 0)) and all(df[k].nunique() <= 1 for k in others):
            return CheckResult("no_duplicates", "OK", 0, len(df))  # strictly ascending: no key twice
    dup_mask = df.duplicated(key_cols, keep=False).to_numpy()
    surplus = int(df.duplicated(key_cols, keep="first").sum())
    if surplus == 0:
        return CheckResult("no_duplicates", "OK", 0, len(df))
    value_cols = [c for c in (*FLOAT_COLUMNS, "trades") if c in df]
    dups = df[dup_mask]
    distinct_versions = dups.drop_duplicates(key_cols + value_cols)
    conflicting_keys = distinct_versions[distinct_versions.duplicated(key_cols, keep=False)]
    conflicting = int(conflicting_keys.drop_duplicates(key_cols).shape[0])
    return CheckResult(
        name="no_duplicates",
        severity="ERROR" if conflicting else "WARN",
        count=surplus,
        checked=len(df),
        samples=_samples(dups["open_time"].to_numpy()) if "open_time" in dups else (),
        details={"duplicated_keys": int(dups.drop_duplicates(key_cols).shape[0]), "conflicting_keys": conflicting},
        rows=_first_rows(df, dup_mask),
    )


def ohlc_rules(df: pd.DataFrame, *, interval_ms: int | None = None, rel_tol: float = 1e-9) -> dict[str, np.ndarray]:
    """Per rule, the rows breaking it (see :func:`ohlc_sane`)."""
    cols = {c: df[c].to_numpy(dtype=np.float64) for c in FLOAT_COLUMNS if c in df}
    o, h, lo, c = cols["open"], cols["high"], cols["low"], cols["close"]
    rules: dict[str, np.ndarray] = {
        "non_finite": ~np.all(np.isfinite(np.column_stack(list(cols.values()))), axis=1),
        "non_positive_price": np.minimum.reduce([o, h, lo, c]) <= 0,
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
    return rules


def ohlc_sane(df: pd.DataFrame, *, interval_ms: int | None = None, rel_tol: float = 1e-9) -> CheckResult:
    """Rows breaking candle invariants (a candle that cannot be true).

    Rules: values finite, prices > 0; low ≤ open ≤ high, low ≤ close ≤ high, low ≤ high;
    volume, quote_volume, taker_buy_* ≥ 0; taker_buy_volume ≤ volume and
    taker_buy_quote_volume ≤ quote_volume (``rel_tol`` slack for float sums); with
    ``interval_ms``, close_time = open_time + interval − 1 and open_time aligned.
    ``details`` counts per rule.
    """
    if df.empty:
        return CheckResult("ohlc_sane", "OK", 0, 0)
    rules = ohlc_rules(df, interval_ms=interval_ms, rel_tol=rel_tol)
    bad = np.zeros(len(df), dtype=bool)
    for mask in rules.values():
        bad |= mask
    return _finding("ohlc_sane", df, bad, {k: int(v.sum()) for k, v in rules.items() if v.any()})


def no_bad_prints(
    df: pd.DataFrame, interval_ms: int, th: Thresholds = DEFAULT_THRESHOLDS, *, found: BadPrints | None = None
) -> CheckResult:
    """Bad prints and spikes by :func:`integrity.detect_bad_prints` (robust, per-symbol thresholds).

    Fewer than ``th.min_rows`` candles (a 4h or 1d day): too few to estimate σ; passes with
    ``details["insufficient"]``.
    """
    if df.empty:
        return CheckResult("no_bad_prints", "OK", 0, 0)
    ot = df["open_time"].to_numpy(dtype=np.int64)
    d = df if ot.size < 2 or bool(np.all(np.diff(ot) > 0)) else df.sort_values("open_time", kind="stable")
    d = d.reset_index(drop=True)
    if found is None or found.open_time.size != len(d) or not np.array_equal(found.open_time, d["open_time"]):
        found = detect_bad_prints(d, interval_ms, th)  # else: the build's screening of this very frame
    details: dict[str, Any] = {
        "jump_z": th.jump_z,
        "wick_z": th.wick_z,
        "min_move": th.min_move,
        "excursions": int(found.excursion.sum()),
        "wicks": int(found.wick.sum()),
        "median_sigma": float(np.median(found.sigma)) if found.sigma.size else 0.0,
        "max_score": float(found.score.max()) if found.score.size else 0.0,
    }
    if len(d) < th.min_rows:
        details["insufficient"] = True
    # A derived candle carries its minutes' flags: a bad print kept at 1m stays visible above.
    carried = _flag_mask(d, FLAG_BAD_PRINT)
    details["carried_from_1m"] = int((carried & ~found.flagged).sum())
    return _finding("no_bad_prints", d, found.flagged | carried, details)


def sources_agree(df: pd.DataFrame, disagreements: Iterable[dict[str, Any]] = ()) -> CheckResult:
    """Minutes whose sources disagreed beyond tolerance when the 1m build reconciled them.

    The build compares the versions (it is the only step that reads every source) and marks
    the stored candle ``source_disagreement``; this check reads those marks, so it judges
    the stored state, and lists the compared values when the build passes them in.
    """
    if df.empty:
        return CheckResult("sources_agree", "OK", 0, 0)
    mask = _flag_mask(df, FLAG_DISAGREE)
    found = list(disagreements)
    return _finding("sources_agree", df, mask, {"compared": found[:MAX_ROWS]} if found else {})


def archive_files_accepted(refused: Iterable[Mapping[str, Any]], consulted: int) -> CheckResult:
    """Archive files covering the day whose last fetch was refused (``{"file", "reason"}`` each).

    WARN: a refused file's rows were never stored (the minutes came from REST), so nothing stored
    is wrong; the failure says the exchange's own published record could not be verified.
    """
    bad = [{"file": str(r.get("file")), "reason": str(r.get("reason"))} for r in refused]
    if not bad:
        return CheckResult("archive_files_accepted", "OK", 0, consulted)
    return CheckResult(
        "archive_files_accepted",
        "WARN",
        len(bad),
        max(consulted, len(bad)),
        details={"refused": bad[:MAX_ROWS]},
    )
