"""Realized-volatility estimators over rolling windows of candles.

Also home of the conventions every analytics module shares (interval lengths,
annualization, the time grid, JSON-safe floats), so that volume, trend and
correlation handle time the same way as volatility.

Conventions
-----------
* **Units.** Estimators are returned as a per-bar standard deviation of log price
  (a fraction: 0.01 = 1 % per bar) and annualized as ``per_bar * sqrt(periods_per_year)``.
* **periods_per_year.** Crypto trades 24/7, so a year is 365 days of bars:
  ``periods_per_year = 365 * 86_400_000 / interval_ms`` — 1m → 525,600; 5m → 105,120;
  1h → 8,760; 4h → 2,190; 1d → 365; 1w → 52.142857. ``1M`` (calendar months) has no
  fixed length and is rejected.
* **Window.** ``window`` counts bars. A bar's close-to-close and overnight terms use
  the previous bar's close, so a window of n bars holds n returns and needs n + 1
  candles; the range estimators (Parkinson, Garman–Klass, Rogers–Satchell) need n.
* **Missing candles.** Candles are reindexed onto the full ``open_time`` grid (one row
  per interval from the first to the last candle); absent candles become NaN rows. A
  return across a gap therefore is NaN, never a multi-bar move disguised as a one-bar
  return. A rolling value is defined only when its window holds at least
  ``min_periods`` valid terms (default: all ``window`` of them), else it is None.
* **Zero-range bars** (H == L) contribute exactly 0 (ln(H/L) = 0); bars with a
  non-positive or missing price are treated as missing, so no log(0) ever happens.
  Variances are clipped at 0 before the square root (inconsistent OHLC can make the
  Garman–Klass / Rogers–Satchell terms slightly negative).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dm_resources.intervals import DAY_MS, WEEK_MS
from dm_resources.intervals import INTERVAL_MS as _EPOCH_ALIGNED
from dm_resources.intervals import MINUTE_MS as MINUTE_MS  # re-exported for the other analytics modules

YEAR_MS = 365 * DAY_MS

# Fixed-length intervals; 1w has a fixed length too (only its alignment is calendar-based),
# which is all annualization needs. 1M has no fixed length and is refused.
INTERVAL_MS: dict[str, int] = {**_EPOCH_ALIGNED, "1w": WEEK_MS}

OHLC = ("open", "high", "low", "close")
LN2 = math.log(2.0)


# --------------------------------------------------------------------------- shared helpers


def interval_ms(interval: str) -> int:
    """Length of a Binance kline interval in ms; calendar months have none, so they are refused."""
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        supported = sorted(INTERVAL_MS)
        raise ValueError(f"unsupported interval {interval!r}; fixed-length intervals: {supported}") from None


def periods_per_year(interval: str) -> float:
    """Bars per 365-day year (24/7 market): 1m → 525600, 1h → 8760, 1d → 365."""
    return YEAR_MS / interval_ms(interval)


def to_float(value: Any) -> float:
    """One price/qty as float: accepts numbers, decimal strings and BSON Decimal128 (raw documents)."""
    if value is None:
        return math.nan
    if hasattr(value, "to_decimal"):  # bson.Decimal128 has no __float__
        value = value.to_decimal()
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def numeric(series: pd.Series) -> pd.Series:
    """A column as float64; object columns (strings, Decimal128 from raw documents) are converted per item."""
    if series.dtype == object:
        return series.map(to_float).astype("float64")
    return series.astype("float64")


def json_float(value: Any) -> float | None:
    """A float for a JSON/BSON document: NaN and ±inf (undefined results) become None."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def clean(value: Any) -> Any:
    """Recursively make a result JSON-serializable: numpy scalars → Python, NaN → None."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return json_float(value)
    return value


class ResultMixin:
    """Gives every result dataclass the same ``to_dict`` (JSON/BSON-safe, None for undefined)."""

    def to_dict(self) -> dict[str, Any]:
        return clean(dataclasses.asdict(self))  # type: ignore[call-overload]  # mixed into dataclasses only


def to_grid(candles: pd.DataFrame, interval: str) -> pd.DataFrame:
    """Candles reindexed on the full open_time grid so that gaps are explicit NaN rows.

    Index is ``open_time`` (int ms) from the first to the last candle in steps of the
    interval; duplicate open_times keep the last row. Price columns become float64.
    Raises ValueError when an open_time is off the grid (misaligned data would be
    silently dropped by a reindex otherwise).
    """
    step = interval_ms(interval)
    if candles is None or len(candles) == 0:
        empty = pd.Index([], dtype="int64", name="open_time")
        return pd.DataFrame(columns=list(OHLC), index=empty, dtype="float64")
    df = candles.drop_duplicates("open_time", keep="last").set_index("open_time").sort_index()
    df.index = df.index.astype("int64")
    start, end = int(df.index[0]), int(df.index[-1])
    if ((df.index.to_numpy() - start) % step != 0).any():
        raise ValueError(f"open_time values are not aligned on a {interval} grid")
    grid = pd.Index(np.arange(start, end + step, step, dtype="int64"), name="open_time")
    out = df.reindex(grid)
    for col in out.columns:
        if col in OHLC or col in ("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume"):
            out[col] = numeric(out[col])
    return out


def valid_ohlc(grid: pd.DataFrame) -> pd.DataFrame:
    """OHLC with bars holding a missing or non-positive price blanked out (so logs are always finite)."""
    ohlc = grid[list(OHLC)].astype("float64")
    bad = ~(ohlc > 0).all(axis=1)
    return ohlc.mask(bad)


# --------------------------------------------------------------------------- estimators (rolling series)


def log_returns(grid: pd.DataFrame) -> pd.Series:
    """ln(C_t / C_{t-1}) on the grid; NaN when either bar is missing (no returns across gaps)."""
    close = valid_ohlc(grid)["close"]
    return np.log(close / close.shift(1))


def _rolling_sqrt_mean(term: pd.Series, window: int, min_periods: int) -> pd.Series:
    var = term.rolling(window, min_periods=min_periods).mean()
    return np.sqrt(var.clip(lower=0.0))


def close_to_close(grid: pd.DataFrame, window: int, min_periods: int | None = None) -> pd.Series:
    """Close-to-close volatility: sample std (ddof = 1) of the last ``window`` log returns.

    σ_cc = sqrt( 1/(n-1) · Σ (r_i − r̄)² ),  r_i = ln(C_i / C_{i-1}).
    """
    mp = _min_periods(window, min_periods)
    return log_returns(grid).rolling(window, min_periods=mp).std(ddof=1)


def parkinson(grid: pd.DataFrame, window: int, min_periods: int | None = None) -> pd.Series:
    """Parkinson (1980), high–low range estimator.

    σ²_P = 1/(4 ln 2) · (1/n) Σ ln(H_i / L_i)²

    Parkinson, M. (1980), "The Extreme Value Method for Estimating the Variance of the
    Rate of Return", Journal of Business 53(1), 61–65. About 5× as efficient as
    close-to-close under driftless Brownian motion, but biased low by discrete trading.
    """
    o = valid_ohlc(grid)
    hl = np.log(o["high"] / o["low"])
    return _rolling_sqrt_mean(hl**2 / (4.0 * LN2), window, _min_periods(window, min_periods))


def garman_klass_terms(grid: pd.DataFrame) -> pd.Series:
    o = valid_ohlc(grid)
    hl = np.log(o["high"] / o["low"])
    co = np.log(o["close"] / o["open"])
    return 0.5 * hl**2 - (2.0 * LN2 - 1.0) * co**2


def garman_klass(grid: pd.DataFrame, window: int, min_periods: int | None = None) -> pd.Series:
    """Garman & Klass (1980), OHLC estimator (no drift, no opening jumps).

    σ²_GK = (1/n) Σ [ ½ ln(H_i/L_i)² − (2 ln 2 − 1) ln(C_i/O_i)² ]

    Garman, M. B. and Klass, M. J. (1980), "On the Estimation of Security Price
    Volatilities from Historical Data", Journal of Business 53(1), 67–78.
    """
    return _rolling_sqrt_mean(garman_klass_terms(grid), window, _min_periods(window, min_periods))


def rogers_satchell_terms(grid: pd.DataFrame) -> pd.Series:
    o = valid_ohlc(grid)
    h, low, op, c = o["high"], o["low"], o["open"], o["close"]
    return np.log(h / c) * np.log(h / op) + np.log(low / c) * np.log(low / op)


def rogers_satchell(grid: pd.DataFrame, window: int, min_periods: int | None = None) -> pd.Series:
    """Rogers & Satchell (1991), drift-independent OHLC estimator.

    σ²_RS = (1/n) Σ [ ln(H_i/C_i)·ln(H_i/O_i) + ln(L_i/C_i)·ln(L_i/O_i) ]

    Rogers, L. C. G. and Satchell, S. E. (1991), "Estimating Variance from High, Low and
    Closing Prices", Annals of Applied Probability 1(4), 504–512.
    """
    return _rolling_sqrt_mean(rogers_satchell_terms(grid), window, _min_periods(window, min_periods))


def yang_zhang(grid: pd.DataFrame, window: int, min_periods: int | None = None) -> pd.Series:
    """Yang & Zhang (2000), drift- and opening-jump-independent, minimum-variance combination.

    σ²_YZ = σ²_o + k·σ²_c + (1 − k)·σ²_RS,   k = 0.34 / (1.34 + (n+1)/(n−1))

    with, over the n bars of the window,
    σ²_o  = sample variance (ddof = 1) of the overnight returns o_i = ln(O_i / C_{i-1})
            (so the window's first bar needs the previous bar's close),
    σ²_c  = sample variance (ddof = 1) of the open-to-close returns c_i = ln(C_i / O_i),
    σ²_RS = the Rogers–Satchell mean above over the same n bars.
    A bar counts only when its overnight return exists (previous candle present);
    n is the number of such bars in the window (= window unless min_periods is relaxed).

    Yang, D. and Zhang, Q. (2000), "Drift-Independent Volatility Estimation Based on
    High, Low, Open, and Close Prices", Journal of Business 73(3), 477–492.
    """
    mp = max(_min_periods(window, min_periods), 2)
    o = valid_ohlc(grid)
    overnight = np.log(o["open"] / o["close"].shift(1))
    usable = overnight.notna()
    open_close = np.log(o["close"] / o["open"]).where(usable)
    rs = rogers_satchell_terms(grid).where(usable)
    n = usable.astype("float64").rolling(window, min_periods=1).sum()
    var_o = overnight.rolling(window, min_periods=mp).var(ddof=1)
    var_c = open_close.rolling(window, min_periods=mp).var(ddof=1)
    var_rs = rs.rolling(window, min_periods=mp).mean()
    k = 0.34 / (1.34 + (n + 1.0) / (n - 1.0))
    var = var_o.clip(lower=0.0) + k * var_c.clip(lower=0.0) + (1.0 - k) * var_rs.clip(lower=0.0)
    return np.sqrt(var)


def _min_periods(window: int, min_periods: int | None) -> int:
    if window < 2:
        raise ValueError("window must be at least 2 bars")
    if min_periods is None:
        return window
    if not 2 <= min_periods <= window:
        raise ValueError("min_periods must be between 2 and window")
    return min_periods


ESTIMATORS = {
    "close_to_close": close_to_close,
    "parkinson": parkinson,
    "garman_klass": garman_klass,
    "rogers_satchell": rogers_satchell,
    "yang_zhang": yang_zhang,
}


def volatility_series(
    candles: pd.DataFrame, interval: str, window: int, min_periods: int | None = None
) -> pd.DataFrame:
    """All estimators as per-bar rolling series on the open_time grid (for charts and the API)."""
    grid = to_grid(candles, interval)
    series = {name: fn(grid, window, min_periods) for name, fn in ESTIMATORS.items()}
    return pd.DataFrame(series, index=grid.index)


# --------------------------------------------------------------------------- result


@dataclass
class VolatilityResult(ResultMixin):
    """Last-window volatility of one symbol; per-bar fractions plus annualized values.

    ``window_start``/``window_end`` are the first open_time of the input grid and the
    exclusive end (last open_time + interval). ``vol_of_vol`` is the sample std
    (ddof = 1) of every defined value of the rolling close-to-close series over the
    input, i.e. how much the window's volatility itself moved during the period.
    ``insufficient_data`` is True when any estimator is undefined (fewer bars than the
    window needs, or a gap inside the last window).
    """

    interval: str
    window: int
    periods_per_year: float
    bars: int
    missing_bars: int
    window_start: int | None
    window_end: int | None
    insufficient_data: bool
    close_to_close: float | None = None
    parkinson: float | None = None
    garman_klass: float | None = None
    rogers_satchell: float | None = None
    yang_zhang: float | None = None
    vol_of_vol: float | None = None
    annualized: dict[str, float | None] = dataclasses.field(default_factory=dict)


def compute_volatility(
    candles: pd.DataFrame, interval: str, window: int, min_periods: int | None = None
) -> VolatilityResult:
    """Every estimator's value at the last bar, plus vol-of-vol, for one symbol and window."""
    ppy = periods_per_year(interval)
    _min_periods(window, min_periods)
    grid = to_grid(candles, interval)
    if grid.empty:
        undefined = dict.fromkeys([*ESTIMATORS, "vol_of_vol"])
        return VolatilityResult(interval, window, ppy, 0, 0, None, None, True, annualized=undefined)
    series = {name: fn(grid, window, min_periods) for name, fn in ESTIMATORS.items()}
    last = {name: json_float(s.iloc[-1]) for name, s in series.items()}
    cc_defined = series["close_to_close"].dropna()
    vov = json_float(cc_defined.std(ddof=1)) if len(cc_defined) >= 2 else None
    scale = math.sqrt(ppy)
    annualized = {name: (v * scale if v is not None else None) for name, v in last.items()}
    annualized["vol_of_vol"] = vov * scale if vov is not None else None
    present = int(valid_ohlc(grid)["close"].notna().sum())
    step = interval_ms(interval)
    return VolatilityResult(
        interval=interval,
        window=window,
        periods_per_year=ppy,
        bars=present,
        missing_bars=len(grid) - present,
        window_start=int(grid.index[0]),
        window_end=int(grid.index[-1]) + step,
        insufficient_data=any(v is None for v in last.values()),
        vol_of_vol=vov,
        annualized=annualized,
        **last,
    )
