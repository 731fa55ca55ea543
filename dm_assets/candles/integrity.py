"""Bad prints, spikes and source disagreements: robust detection on 1m (and higher) candles.

Pure numpy/pandas. Two facts about exchange candles carry the detection:

* **Continuity.** A kline's open is the first trade of its minute and its close the last,
  so the next minute's open sits one trade away from this minute's close. Real moves,
  however violent, travel *inside* candles; a bad print (a whole row at 2.4× its
  neighbours, a wrong first or last trade) shows up as a jump *across a minute boundary*
  that reverts within a minute or two. So the price path ``o₀ c₀ o₁ c₁ …`` is scanned for
  **excursions**: 1–``2·max_excursion_minutes`` consecutive points that leave the level of
  the point before and come back to the level of the point after (the two anchors agree),
  every point beyond the threshold, with at least one of the two jumps on a minute
  boundary. A flash crash that recovers over several minutes moves candle by candle with
  continuous opens and closes: no boundary jump, no excursion.
* **Wicks against the neighbourhood.** A spike inside one minute (a bad trade in a
  trade-built minute, a websocket kline whose high is 1.8× the price) is a wick far beyond
  everything around it. Its *excess* is how far the high (low) reaches beyond both its own
  body and the highs (lows) of the ``wick_neighbours`` minutes either side; it is flagged
  when the excess exceeds ``wick_z`` times the local scale, the largest of: the robust σ of
  1m returns, the rolling median range, the candle's own body and its neighbours' bodies.
  In a crash the bodies are large, so the crash's own wicks are not outliers.

The threshold unit is a robust σ of close-to-close log returns over a centred rolling
window (1.4826 × rolling median absolute deviation; MAD ignores the outliers it is
looking for), never below ``min_move`` (a move under 0.5 % is never called a bad print,
which keeps flat, illiquid symbols quiet). All thresholds can be set per symbol with
``DM_QUALITY_THRESHOLDS`` (JSON). Measured false-positive and detection rates:
``bench/bench_integrity.py`` (README).

Reconciliation compares versions of the same minute from different sources (websocket
kline, REST kline, aggregated trades proven complete) within a relative tolerance.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd

MAD_TO_SIGMA = 1.4826

# Per-candle flags (``candles.flags``).
FLAG_BAD_PRINT = "bad_print"
FLAG_OHLC = "ohlc_impossible"
FLAG_DISAGREE = "source_disagreement"
FLAG_VERIFIED = "verified"  # REST was asked again and had nothing better: kept as suspect
FLAG_PROVISIONAL = "provisional"  # derived over minutes the exchange said it lacks, not yet confirmed
FINDING_FLAGS = (FLAG_BAD_PRINT, FLAG_OHLC, FLAG_DISAGREE)


@dataclass(frozen=True)
class Thresholds:
    """Documented defaults (README "Data quality"); overridable per symbol."""

    jump_z: float = 12.0  # excursion points beyond this many robust σ
    wick_z: float = 10.0  # wick excess beyond this many local scales
    min_move: float = 0.005  # never flag a move under 0.5 % of price
    max_excursion_minutes: int = 2  # a bad print reverts within this many minutes
    wick_neighbours: int = 2  # minutes either side forming the neighbourhood envelope
    window: int = 61  # centred rolling window (minutes) for σ and typical range
    min_rows: int = 15  # fewer candles: too little to estimate σ, nothing flagged
    gap_error_ratio: float = 0.01  # no_gaps: ERROR when more than 1 % of the due buckets are missing
    price_tolerance: float = 1e-6  # reconciliation: relative difference allowed on o/h/l/c
    volume_tolerance: float = 1e-6  # reconciliation: relative difference allowed on volumes


DEFAULT_THRESHOLDS = Thresholds()


def thresholds_for(symbol: str, overrides: Mapping[str, Mapping[str, float]] | None = None) -> Thresholds:
    """Defaults, then the ``"*"`` overrides, then the symbol's own (``DM_QUALITY_THRESHOLDS``)."""
    if overrides is None:
        from dm_resources.settings import get_settings

        overrides = get_settings().quality_thresholds
    known = {f.name: f.type for f in fields(Thresholds)}
    th = DEFAULT_THRESHOLDS
    for key in ("*", symbol):
        values = overrides.get(key) or {}
        bad = set(values) - set(known)
        if bad:
            raise ValueError(f"DM_QUALITY_THRESHOLDS[{key!r}]: unknown keys {sorted(bad)}; known: {sorted(known)}")
        changes: dict[str, Any] = {k: (int(v) if known[k] == "int" else float(v)) for k, v in values.items()}
        th = replace(th, **changes)
    return th


@dataclass(frozen=True)
class BadPrints:
    """Per-row result of :func:`detect_bad_prints`, aligned with the input order sorted by open_time."""

    open_time: np.ndarray  # int64, ascending
    excursion: np.ndarray  # bool: part of a reverting cross-boundary excursion
    wick: np.ndarray  # bool: wick far beyond the neighbourhood
    score: np.ndarray  # float: size of the worst finding in thresholds (≥ 1 when flagged)
    sigma: np.ndarray  # float: the robust σ used per row

    @property
    def flagged(self) -> np.ndarray:
        return self.excursion | self.wick

    def flagged_times(self) -> np.ndarray:
        return self.open_time[self.flagged]


# Below this many rows a centred window is cheaper as one numpy array of windows than as a pandas
# rolling object (whose set-up dominates on a day of 5m, 15m or 1h candles).
_SMALL = 512


def _nanmedian_rows(wins: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``np.nanmedian(wins, axis=1)`` (NaN for a row without values) by one sort: NaN sorts last.

    The same numbers (the middle value, or the mean of the two middle ones), at a fraction of
    ``nanmedian``'s cost on many short rows (it falls back to masked arrays there).
    """
    s = np.sort(wins, axis=1)
    k = valid.astype(np.intp)
    lo = np.take_along_axis(s, np.maximum((k - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(s, np.maximum(k // 2, 0)[:, None], axis=1)[:, 0]
    mid = np.where(k % 2 == 1, hi, (lo + hi) / 2)
    return np.where(k > 0, mid, np.nan)


def _rolling(
    values: np.ndarray, window: int, how: str, segments: Sequence[tuple[int, int]] | None = None
) -> np.ndarray:
    """Centred rolling median (or max) skipping NaN, NaN below ``max(3, window // 4)`` values: pandas' rule.

    ``segments``: ``[start, end)`` row ranges of independent days laid out one after another with
    NaN rows between them (:func:`detect_bad_prints_many`); a window then never reaches another
    day, and a value the window leaves undefined falls back to its own day's median.
    """
    min_periods = max(3, window // 4)
    if values.size <= _SMALL:
        half = window // 2
        padded = np.concatenate([np.full(half, np.nan), values.astype(np.float64), np.full(window - 1 - half, np.nan)])
        wins = np.lib.stride_tricks.sliding_window_view(padded, window)
        valid = np.isfinite(wins).sum(axis=1)
        if how == "median":
            out = _nanmedian_rows(wins, valid)
        else:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: NaN, as pandas gives
                out = np.nanmax(wins, axis=1)
        out = np.where(valid >= min_periods, out, np.nan)
    else:
        r = pd.Series(values).rolling(window, center=True, min_periods=min_periods)
        out = (r.median() if how == "median" else r.max()).to_numpy(dtype=np.float64, copy=True)
    for lo, hi in segments if segments is not None else [(0, values.size)]:
        part = values[lo:hi]
        fallback = float(np.nanmedian(part)) if np.isfinite(part).any() else 0.0
        out[lo:hi] = np.where(np.isfinite(out[lo:hi]), out[lo:hi], fallback)
    return out


def robust_sigma(
    log_close: np.ndarray, consecutive: np.ndarray, window: int, segments: Sequence[tuple[int, int]] | None = None
) -> np.ndarray:
    """Per-row robust σ of 1m log returns: 1.4826 × centred rolling MAD (returns across gaps excluded)."""
    r = np.full(log_close.size, np.nan)
    r[1:] = np.where(consecutive[1:], np.diff(log_close), np.nan)
    center = np.zeros(log_close.size)
    for lo, hi in segments if segments is not None else [(0, log_close.size)]:
        part = r[lo:hi]
        center[lo:hi] = np.nanmedian(part) if np.isfinite(part).any() else 0.0
    return MAD_TO_SIGMA * _rolling(np.abs(r - center), window, "median", segments)


def detect_bad_prints(df: pd.DataFrame, step_ms: int, th: Thresholds = DEFAULT_THRESHOLDS) -> BadPrints:
    """Rows that are bad prints or spikes by the two rules of the module docstring."""
    d = df.sort_values("open_time", kind="stable")
    ot = d["open_time"].to_numpy(dtype=np.int64)
    n = ot.size
    empty = np.zeros(n, dtype=bool)
    if n < th.min_rows:
        return BadPrints(ot, empty, empty.copy(), np.zeros(n), np.zeros(n))
    with np.errstate(divide="ignore", invalid="ignore"):
        lo_, lh, ll, lc = (np.log(d[c].to_numpy(dtype=np.float64)) for c in ("open", "high", "low", "close"))
    excursion, wick, score, sigma = _detect(ot, lo_, lh, ll, lc, step_ms, th, [(0, n)])
    return BadPrints(ot, excursion, wick, score, sigma)


def detect_bad_prints_many(
    frames: Sequence[pd.DataFrame], step_ms: int, th: Thresholds = DEFAULT_THRESHOLDS
) -> list[BadPrints]:
    """:func:`detect_bad_prints` of many days of one symbol and interval, in one pass: the same results.

    The days are laid out one after another with ``th.window`` invalid rows between them, so no
    window, neighbourhood or excursion reaches from one day into another, and the per-day medians
    (the MAD's centre, the fallbacks) are taken per day. A day of 5m, 15m or 1h candles is a few
    hundred rows, where the detector's cost was its ~100 numpy calls, not the rows: one pass for
    a chunk's days pays them once (``bench/bench_history.py``). Days too short to judge, or not
    sorted, go through :func:`detect_bad_prints` alone.
    """
    out: list[BadPrints | None] = [None] * len(frames)
    batch: list[tuple[int, np.ndarray]] = []
    for i, df in enumerate(frames):
        ot = df["open_time"].to_numpy(dtype=np.int64) if len(df) else np.empty(0, np.int64)
        if ot.size < th.min_rows or not bool(np.all(np.diff(ot) > 0)):
            out[i] = detect_bad_prints(df, step_ms, th)
        else:
            batch.append((i, ot))
    if batch:
        pad = max(th.window, 2 * th.wick_neighbours + 1, 2 * th.max_excursion_minutes + 2)
        total = sum(ot.size for _, ot in batch) + pad * (len(batch) + 1)
        ot_all = np.full(total, -1, dtype=np.int64)
        logs = {c: np.full(total, np.nan) for c in ("open", "high", "low", "close")}
        segments: list[tuple[int, int]] = []
        pos = pad
        for i, ot in batch:
            hi = pos + ot.size
            ot_all[pos:hi] = ot
            with np.errstate(divide="ignore", invalid="ignore"):
                for c, arr in logs.items():
                    arr[pos:hi] = np.log(frames[i][c].to_numpy(dtype=np.float64))
            segments.append((pos, hi))
            pos = hi + pad
        excursion, wick, score, sigma = _detect(
            ot_all, logs["open"], logs["high"], logs["low"], logs["close"], step_ms, th, segments
        )
        for (i, ot), (lo, hi) in zip(batch, segments, strict=True):
            out[i] = BadPrints(ot, excursion[lo:hi], wick[lo:hi], score[lo:hi], sigma[lo:hi])
    return [b for b in out if b is not None]


def _detect(
    ot: np.ndarray,
    lo_: np.ndarray,
    lh: np.ndarray,
    ll: np.ndarray,
    lc: np.ndarray,
    step_ms: int,
    th: Thresholds,
    segments: Sequence[tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two rules over log prices (rows ascending within each segment): excursion, wick, score, σ."""
    n = ot.size
    valid = np.isfinite(lo_) & np.isfinite(lh) & np.isfinite(ll) & np.isfinite(lc)
    consecutive = np.zeros(n, dtype=bool)
    consecutive[1:] = (np.diff(ot) == step_ms) & valid[1:] & valid[:-1]
    sigma = robust_sigma(np.where(valid, lc, np.nan), consecutive, th.window, segments)
    floor = np.log1p(th.min_move)
    unit = np.maximum(th.jump_z * sigma, floor)  # a point must move more than this

    # --- rule 1: reverting excursions on the path o0 c0 o1 c1 ... -------------------------
    x = np.empty(2 * n)
    x[0::2], x[1::2] = lo_, lc
    # link k joins point k-1 and point k; valid when both points belong to consecutive rows
    link_ok = np.ones(2 * n, dtype=bool)
    link_ok[0] = False
    link_ok[2::2] = consecutive[1:]  # close of row i-1 → open of row i
    link_ok[1::2] = valid
    boundary = np.zeros(2 * n, dtype=bool)
    boundary[0::2] = True  # link into an open crosses a minute boundary
    pt_unit = np.repeat(unit, 2)
    excursion_pts = np.zeros(2 * n, dtype=bool)
    score = np.zeros(n)
    run_ok = np.cumsum(~link_ok)  # equal values at i and j ⇔ every link in (i, j] is usable
    for length in range(1, 2 * th.max_excursion_minutes + 1):
        k = np.arange(1, 2 * n - length)  # segment [k, k+length-1], anchors k-1 and k+length
        if k.size == 0:
            break
        a, b = x[k - 1], x[k + length]
        same_run = run_ok[k + length] == run_ok[k - 1]
        thr = np.maximum(pt_unit[k - 1], pt_unit[k + length])
        jin, jout = x[k] - a, b - x[k + length - 1]
        mid = (a + b) / 2
        seg = np.stack([x[k + i] for i in range(length)])  # (length, m)
        dev = seg - mid
        direction = np.sign(jin)
        beyond = np.all(dev * direction > thr, axis=0)
        ok = (
            same_run
            & (np.abs(jin) > thr)
            & (np.abs(jout) > thr)
            & (np.sign(jout) == -direction)
            & (np.abs(b - a) < 0.5 * np.minimum(np.abs(jin), np.abs(jout)))
            & beyond
            & (boundary[k] | boundary[k + length])
        )
        for i in np.flatnonzero(ok):
            pts = np.arange(k[i], k[i] + length)
            excursion_pts[pts] = True
            rows = np.unique(pts // 2)
            score[rows] = np.maximum(score[rows], float(np.min(np.abs(dev[:, i])) / thr[i]))
    excursion = excursion_pts[0::2] | excursion_pts[1::2]

    # --- rule 2: wicks far beyond the neighbourhood ----------------------------------------
    body_hi, body_lo = np.maximum(lo_, lc), np.minimum(lo_, lc)
    body = np.abs(lc - lo_)
    neighbours = th.wick_neighbours
    nb_hi = np.full(n, -np.inf)
    nb_lo = np.full(n, np.inf)
    nb_body = np.zeros(n)
    for off in range(1, neighbours + 1):
        for sgn in (-1, 1):
            idx = np.arange(n) + sgn * off
            inside = (idx >= 0) & (idx < n)
            j = np.clip(idx, 0, n - 1)
            near = inside & (np.abs(ot[j] - ot) == off * step_ms) & valid[j]
            nb_hi = np.where(near, np.maximum(nb_hi, lh[j]), nb_hi)
            nb_lo = np.where(near, np.minimum(nb_lo, ll[j]), nb_lo)
            nb_body = np.where(near, np.maximum(nb_body, body[j]), nb_body)
    typical_range = _rolling(np.where(valid, lh - ll, np.nan), th.window, "median", segments)
    scale = np.maximum.reduce([sigma, typical_range, body, nb_body])
    wick_unit = np.maximum(th.wick_z * scale, floor)
    up = lh - np.maximum(body_hi, nb_hi)
    down = np.minimum(body_lo, nb_lo) - ll
    excess = np.maximum(up, down)
    wick = valid & np.isfinite(excess) & (excess > wick_unit)
    score = np.maximum(score, np.where(wick, excess / wick_unit, 0.0))
    return excursion & valid, wick, score, sigma


@dataclass(frozen=True)
class Disagreement:
    open_time: int
    sources: tuple[str, str]
    fields: dict[str, tuple[float, float]]  # field → (value in first source, value in second)

    def as_dict(self) -> dict[str, Any]:
        return {
            "open_time": self.open_time,
            "sources": list(self.sources),
            "values": {k: {self.sources[0]: a, self.sources[1]: b} for k, (a, b) in self.fields.items()},
        }


PRICE_FIELDS = ("open", "high", "low", "close")
VOLUME_FIELDS = ("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume")


def reconcile(
    first: pd.DataFrame,
    second: pd.DataFrame,
    names: tuple[str, str],
    th: Thresholds = DEFAULT_THRESHOLDS,
    *,
    compare_volumes: bool = True,
) -> list[Disagreement]:
    """Minutes present in both frames whose prices (volumes) differ beyond the relative tolerances.

    Prices must agree within ``price_tolerance`` (1e-6: both are the exchange's decimal
    strings, converted to float64 exactly to ~1e-15, so any larger difference is a
    different number); volumes within ``volume_tolerance`` (float sums).
    """
    if first.empty or second.empty:
        return []
    cols = ["open_time", *PRICE_FIELDS, *(VOLUME_FIELDS if compare_volumes else ())]
    cols = [c for c in cols if c in first and c in second]
    m = (
        first[cols]
        .drop_duplicates("open_time")
        .merge(second[cols].drop_duplicates("open_time"), on="open_time", suffixes=("_a", "_b"))
    )
    if m.empty:
        return []
    bad = np.zeros(len(m), dtype=bool)
    per_field: dict[str, np.ndarray] = {}
    for c in cols[1:]:
        a, b = m[f"{c}_a"].to_numpy(dtype=np.float64), m[f"{c}_b"].to_numpy(dtype=np.float64)
        tol = th.price_tolerance if c in PRICE_FIELDS else th.volume_tolerance
        diff = np.abs(a - b) > tol * np.maximum(np.abs(a), np.abs(b)) + 1e-12
        per_field[c] = diff
        bad |= diff
    out: list[Disagreement] = []
    for i in np.flatnonzero(bad):
        out.append(
            Disagreement(
                open_time=int(m["open_time"].iat[i]),
                sources=names,
                fields={c: (float(m[f"{c}_a"].iat[i]), float(m[f"{c}_b"].iat[i])) for c in cols[1:] if per_field[c][i]},
            )
        )
    return out


def ohlc_impossible(df: pd.DataFrame) -> np.ndarray:
    """Rows whose prices cannot be a candle: non-finite or non-positive, open/close outside [low, high]."""
    if df.empty:
        return np.zeros(0, dtype=bool)
    o, h, lo, c = (df[f].to_numpy(dtype=np.float64) for f in PRICE_FIELDS)
    finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)
    with np.errstate(invalid="ignore"):
        return ~finite | (lo <= 0) | (lo > h) | (o < lo) | (o > h) | (c < lo) | (c > h)
