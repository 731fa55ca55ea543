"""Pattern search: "when did this market last look like this, and what happened next?"

Plain numpy over dense close-price series (one float per bar, NaN where a bar is missing or was
flagged by the integrity checks), no store and no Dagster:

* the distance of every window of a series to the query window is the z-normalized Euclidean
  distance (shape only: level and scale removed), computed for all windows at once by MASS
  (Mueen's algorithm: sliding dot products by FFT) from ``stumpy``; a window holding a missing
  bar gets distance ∞ and is never a match;
* the k best windows are taken greedily, each excluding every window that overlaps it, over the
  windows that end before the query window starts (so no match overlaps the query nor another);
* each match reports what followed: the return from its last close to the close ``m`` bars later
  and the maximum drawdown on the way (peak-to-trough of the closes, entry included).

:func:`brute_force_profile` is the same distance by a plain z-normalize-and-subtract scan: the
benchmark's anchor and the tests' oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dm_resources.intervals import DAY_MS

WINDOW_MIN, WINDOW_MAX = 8, 1_000
K_MIN, K_MAX = 1, 50
MAX_SYMBOLS = 20
# How far back the search looks per period (bars): a year of 1m and 5m, two of 15m, five of 1h
# and 4h, ten of 1d. Bounds the work of one request: at most 20 × 525,600 bars.
HISTORY_DAYS: dict[str, int] = {"1m": 365, "5m": 365, "15m": 730, "1h": 1825, "4h": 1825, "1d": 3650}


# Bars one search may compare across all its symbols: a search holds about ten float64 arrays of
# that length at its peak (≈ 170 MB at the limit), so 20 symbols of 1h fit, and 4 of a year of 1m.
MAX_BARS = 2_200_000


def history_ms(interval: str) -> int:
    return HISTORY_DAYS[interval] * DAY_MS


def history_bars(interval: str, step_ms: int) -> int:
    return history_ms(interval) // step_ms


@dataclass(frozen=True)
class DenseSeries:
    """Closes on a regular grid: bar ``i`` opens at ``start + i * step``; NaN where there is no usable bar."""

    symbol: str
    start: int
    step: int
    closes: np.ndarray

    @property
    def n(self) -> int:
        return int(self.closes.size)

    @property
    def end(self) -> int:
        return self.start + self.n * self.step

    def trimmed(self) -> DenseSeries:
        """From its first bar to its last: the history searched, without the grid before the data began
        or after it stopped (the still-open bar, a feed that stopped)."""
        finite = np.flatnonzero(np.isfinite(self.closes))
        if finite.size == 0:
            return DenseSeries(self.symbol, self.start, self.step, self.closes[:0])
        a, b = int(finite[0]), int(finite[-1]) + 1
        return DenseSeries(self.symbol, self.start + a * self.step, self.step, self.closes[a:b])


def dense_closes(
    open_times: np.ndarray, closes: np.ndarray, start: int, end: int, step: int, symbol: str = ""
) -> DenseSeries:
    """Scatter (open_time, close) pairs onto the grid ``[start, end)``; rows off the grid are ignored."""
    n = max(0, (end - start) // step)
    out = np.full(n, np.nan)
    ot = np.asarray(open_times, dtype=np.int64)
    idx = (ot - start) // step
    ok = (ot >= start) & (ot < end) & ((ot - start) % step == 0)
    out[idx[ok]] = np.asarray(closes, dtype=np.float64)[ok]
    return DenseSeries(symbol, start, step, out)


# --------------------------------------------------------------------------- distances


def sliding_stats(series: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard deviation and constancy of every window, in O(n) (pandas' rolling kernels).

    stumpy computes these itself window by window (O(n·m): 85 % of a year-long MASS call here);
    handing them over leaves it only the FFT and the distance. Windows holding a NaN get mean ∞
    (stumpy's mark for "never a match"); pandas returns exactly 0 for a constant window.
    """
    import pandas as pd

    roll = pd.Series(series).rolling(m)
    mean = roll.mean().to_numpy()[m - 1 :].copy()
    std = roll.std(ddof=0).to_numpy()[m - 1 :].copy()
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    mean[bad], std[bad] = np.inf, 0.0
    return mean, std, (std == 0) & ~bad


def mass_profile(query: np.ndarray, series: np.ndarray) -> np.ndarray:
    """z-normalized distance of every window of ``series`` to ``query`` (MASS, stumpy); ∞ for windows with NaN."""
    import numba
    import stumpy  # numba compiles on first use: imported where it is needed

    # stumpy's kernels are parallel; on a few cores their thread start-up costs more than one
    # profile gains (measured: 45 → 21 ms a year of 1m), and the API already runs requests in
    # parallel. The setting is per thread.
    numba.set_num_threads(1)
    mean, std, const = sliding_stats(series, query.size)
    q_const = np.array([bool(np.ptp(query) == 0)])
    prof = np.asarray(
        stumpy.mass(query, series, M_T=mean, Σ_T=std, T_subseq_isconstant=const, Q_subseq_isconstant=q_const),
        dtype=np.float64,
    )
    prof[~np.isfinite(prof)] = np.inf
    return prof


def warm_up() -> None:
    """Compile stumpy's numba kernels now (about 3 s once per process) instead of in the first request."""
    t = np.sin(np.arange(64.0))
    mass_profile(t[:16].copy(), t)


def brute_force_profile(query: np.ndarray, series: np.ndarray, block: int = 65_536) -> np.ndarray:
    """The same distances by z-normalizing every window and subtracting (the anchor; O(n·m) memory per block).

    Constant windows follow stumpy's convention: distance 0 between two constant windows and
    √m between a constant and a varying one.
    """
    m = query.size
    q_std = query.std()
    q_const = q_std == 0 or not np.isfinite(q_std)
    zq = np.zeros(m) if q_const else (query - query.mean()) / q_std
    windows = np.lib.stride_tricks.sliding_window_view(series, m)
    out = np.empty(windows.shape[0])
    for lo in range(0, windows.shape[0], block):
        w = windows[lo : lo + block]
        mu = w.mean(axis=1, keepdims=True)
        sd = w.std(axis=1, keepdims=True)
        const = (sd == 0)[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            zw = (w - mu) / sd
            d = np.sqrt(((zw - zq) ** 2).sum(axis=1))
        # stumpy's convention for constant windows (their z-normalization is undefined)
        d = np.where(const, 0.0, math.sqrt(m)) if q_const else np.where(const, math.sqrt(m), d)
        d[~np.isfinite(w).all(axis=1)] = np.inf
        out[lo : lo + block] = d
    return out


# --------------------------------------------------------------------------- matches


@dataclass(frozen=True)
class Match:
    symbol: str
    start: int  # open time of the match's first bar, epoch ms UTC
    end: int  # open time of the bar after its last (exclusive)
    index: int
    distance: float
    forward_return: float | None
    max_drawdown: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "start": self.start,
            "end": self.end,
            "distance": round(self.distance, 6),
            "forward_return": None if self.forward_return is None else round(self.forward_return, 8),
            "max_drawdown": None if self.max_drawdown is None else round(self.max_drawdown, 8),
        }


def top_k_non_overlapping(profile: np.ndarray, k: int, m: int, last_start: int) -> list[int]:
    """Greedy: the best window, then the best that overlaps none taken, …; only windows starting ≤ ``last_start``."""
    prof = np.array(profile[: max(0, last_start + 1)], dtype=np.float64)
    picks: list[int] = []
    while len(picks) < k and prof.size:
        i = int(np.argmin(prof))
        if not np.isfinite(prof[i]):
            break
        picks.append(i)
        prof[max(0, i - m + 1) : i + m] = np.inf
    return picks


def what_followed(closes: np.ndarray, i: int, m: int) -> tuple[float | None, float | None]:
    """(return over the next ``m`` bars, their max drawdown) after the window starting at ``i``."""
    entry = closes[i + m - 1]
    path = closes[i + m : i + 2 * m]
    if not np.isfinite(entry) or entry <= 0 or path.size == 0:
        return None, None
    last = path[-1]
    ret = float(last / entry - 1) if np.isfinite(last) else None
    prices = np.concatenate([[entry], path[np.isfinite(path)]])
    peaks = np.maximum.accumulate(prices)
    return ret, float((prices / peaks - 1).min())


@dataclass(frozen=True)
class SearchResult:
    query: DenseSeries
    window: int
    matches: list[Match]
    searched: dict[str, int]  # symbol → windows compared


class HistoryTooShort(ValueError):
    """Fewer than two windows of history: nothing can be compared with the latest window."""


class QueryIncomplete(ValueError):
    """The latest window has missing or flagged bars: its shape is not known."""


def search(
    query_series: DenseSeries,
    candidates: Mapping[str, DenseSeries],
    window: int,
    k: int,
    *,
    profile: Callable[[np.ndarray, np.ndarray], np.ndarray] = mass_profile,
) -> SearchResult:
    """The ``k`` windows across ``candidates`` closest in shape to the last ``window`` bars of ``query_series``.

    A candidate window must end by the time the query window starts (no overlap with it, whatever
    the symbol), and its ``window`` following bars must exist in its own series.
    """
    q = query_series.trimmed()
    if q.n < 2 * window:
        raise HistoryTooShort(
            f"{q.symbol} has {q.n} bars of history, fewer than two windows ({2 * window}): nothing to compare"
        )
    query = q.closes[-window:]
    missing = int((~np.isfinite(query)).sum())
    if missing:
        raise QueryIncomplete(
            f"the latest {window} bars of {q.symbol} have {missing} missing or flagged bars; their shape is unknown"
        )
    query_start = q.end - window * q.step
    searched: dict[str, int] = {}
    usable: list[tuple[str, DenseSeries, int]] = []
    for sym, series in candidates.items():
        s = series.trimmed() if sym != q.symbol else q
        # windows that end by the query's start and have `window` bars after them in this series
        last_start = min((query_start - s.start) // s.step - window, s.n - 2 * window) if s.n else -1
        searched[sym] = max(0, last_start + 1)
        if last_start >= 0:
            usable.append((sym, s, last_start))
    scored: list[Match] = []
    if usable:
        # One profile over every series end to end, a NaN between them (a window across a seam
        # holds it, so it is never a match): one FFT instead of one per symbol.
        joined = np.concatenate([x for _, s, _ in usable for x in (s.closes, [np.nan])])
        prof = profile(query, joined)
        offset = 0
        for sym, s, last_start in usable:
            own = prof[offset : offset + s.n - window + 1]
            offset += s.n + 1
            for i in top_k_non_overlapping(own, k, window, last_start):
                ret, dd = what_followed(s.closes, i, window)
                start = s.start + i * s.step
                scored.append(Match(sym, start, start + window * s.step, i, float(own[i]), ret, dd))
    scored.sort(key=lambda mt: (mt.distance, mt.symbol, mt.start))
    return SearchResult(q, window, scored[:k], searched)


def summary(matches: Sequence[Match]) -> dict[str, Any]:
    """What followed the matches, taken together: the reader's headline."""
    rets = [mt.forward_return for mt in matches if mt.forward_return is not None]
    dds = [mt.max_drawdown for mt in matches if mt.max_drawdown is not None]
    if not rets:
        return {"matches": len(matches), "median_return": None, "share_up": None, "median_max_drawdown": None}
    return {
        "matches": len(matches),
        "median_return": round(float(np.median(rets)), 8),
        "share_up": round(sum(r > 0 for r in rets) / len(rets), 4),
        "median_max_drawdown": round(float(np.median(dds)), 8) if dds else None,
    }
