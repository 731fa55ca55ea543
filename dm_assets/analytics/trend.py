"""Trend measures: moving-average crossovers, log-price regression slope, horizon returns, ADX.

All computed on the open_time grid of :func:`volatility.to_grid`, so a missing candle
is a NaN row: a simple moving average whose window holds a gap is undefined, a
return whose start bar is missing is None, and the recursive smoothers (EMA, Wilder)
skip missing terms (they are fed the present values in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dm_assets.analytics.volatility import (
    ResultMixin,
    interval_ms,
    json_float,
    periods_per_year,
    to_grid,
    valid_ohlc,
)
from dm_resources.contracts import duration_ms

DEFAULT_HORIZONS: tuple[str, ...] = ("1h", "4h", "1d", "7d", "30d")


# --------------------------------------------------------------------------- smoothers


def sma(values: pd.Series, n: int) -> pd.Series:
    """Simple moving average of the last n bars; undefined (NaN) when any of them is missing."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return values.rolling(n, min_periods=n).mean()


def seeded_ewm(values: pd.Series, n: int, alpha: float) -> pd.Series:
    """Recursive y_t = y_{t-1} + α (x_t − y_{t-1}), seeded with the SMA of the first n present values.

    The seed is the classic TA convention (Wilder, and most charting packages): the
    first output is at the n-th present value, earlier ones are NaN. Missing (NaN)
    inputs are skipped — the recursion runs over the present values in order — and
    stay NaN in the output.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    present = values.dropna()
    out = pd.Series(np.nan, index=values.index, dtype="float64")
    if len(present) < n:
        return out
    tail = present.iloc[n - 1 :].astype("float64").copy()
    tail.iloc[0] = present.iloc[:n].mean()
    out.loc[tail.index] = tail.ewm(alpha=alpha, adjust=False).mean().to_numpy()
    return out


def ema(values: pd.Series, n: int) -> pd.Series:
    """Exponential moving average, α = 2/(n+1), seeded with the SMA of the first n values."""
    return seeded_ewm(values, n, 2.0 / (n + 1.0))


def wilder(values: pd.Series, n: int) -> pd.Series:
    """Wilder's smoothing (RMA), α = 1/n, seeded with the mean of the first n values.

    Wilder's running *sum* S_t = S_{t-1} − S_{t-1}/n + x_t (seeded with the first n-sum)
    is exactly n × this average, so ratios of smoothed quantities (DI) are identical.
    """
    return seeded_ewm(values, n, 1.0 / n)


# --------------------------------------------------------------------------- crossovers


def crossovers(fast: pd.Series, slow: pd.Series) -> list[dict[str, Any]]:
    """Times where ``fast`` crosses ``slow``: ``bullish`` (fast goes above) or ``bearish``.

    A cross is reported at the first bar whose sign of (fast − slow) is strictly
    opposite to the last non-zero sign: touching (difference exactly 0) and returning
    to the same side is not a cross; −, 0, + reports the cross at the ``+`` bar. Bars
    where either average is undefined neither create nor break a cross.
    """
    diff = fast - slow
    sign = np.sign(diff).replace(0.0, np.nan).ffill()
    prev = sign.shift(1)
    hits = diff.notna() & prev.notna() & (sign != prev)
    out: list[dict[str, Any]] = []
    idx = hits[hits].index
    for t in idx:  # one iteration per cross, not per row
        out.append(
            {
                "time": int(t),
                "direction": "bullish" if sign.loc[t] > 0 else "bearish",
                "fast": json_float(fast.loc[t]),
                "slow": json_float(slow.loc[t]),
            }
        )
    return out


# --------------------------------------------------------------------------- regression slope


def log_price_slope(close: pd.Series) -> tuple[float | None, float | None, int]:
    """OLS slope of ln(close) on the bar number, its R², and the number of points.

    x is the position on the open_time grid (0, 1, 2, …), so a missing candle leaves a
    hole in x instead of compressing time. Slope is log-return drift per bar. R² is
    None when the price is constant (0/0); both are None with fewer than 2 points.
    """
    y_all = np.log(close.where(close > 0).to_numpy(dtype="float64"))
    x_all = np.arange(len(y_all), dtype="float64")
    ok = np.isfinite(y_all)
    x, y = x_all[ok], y_all[ok]
    if len(x) < 2:
        return None, None, len(x)
    xm, ym = x - x.mean(), y - y.mean()
    sxx, syy, sxy = float(xm @ xm), float(ym @ ym), float(xm @ ym)
    slope = sxy / sxx
    r2 = (sxy * sxy) / (sxx * syy) if syy > 0 else None
    return slope, r2, len(x)


# --------------------------------------------------------------------------- horizon returns


def horizon_bars(horizon: int | str, interval: str) -> int:
    """A horizon as a bar count: ints are bars; strings like '15m', '4h', '7d', '1w' are durations."""
    if isinstance(horizon, int):
        if horizon < 1:
            raise ValueError("horizon must be >= 1 bar")
        return horizon
    try:
        ms = duration_ms(horizon)
    except ValueError:
        raise ValueError(f"bad horizon {horizon!r}: use an int (bars) or e.g. '15m', '4h', '7d'") from None
    step = interval_ms(interval)
    if ms < step or ms % step:
        raise ValueError(f"horizon {horizon} is not a whole number of {interval} bars")
    return ms // step


def horizon_returns(close: pd.Series, horizons: Sequence[int | str], interval: str) -> dict[str, float | None]:
    """Simple return C_last / C_{last−h} − 1 for each horizon of h grid bars.

    None when the data is shorter than the horizon or the start bar is a missing candle
    (the return is never silently measured from a different bar).
    """
    out: dict[str, float | None] = {}
    values = close.where(close > 0).to_numpy(dtype="float64")
    for h in horizons:
        bars = horizon_bars(h, interval)
        key = str(h)
        if len(values) == 0 or bars >= len(values):
            out[key] = None
            continue
        out[key] = json_float(values[-1] / values[-1 - bars] - 1.0)
    return out


# --------------------------------------------------------------------------- ADX


def adx(grid: pd.DataFrame, period: int = 14) -> pd.DataFrame:
    """Wilder's Average Directional Index with +DI and −DI.

    Wilder, J. W. (1978), *New Concepts in Technical Trading Systems*.

    up = H_t − H_{t−1},  down = L_{t−1} − L_t
    +DM = up if up > down and up > 0 else 0;  −DM = down if down > up and down > 0 else 0
    TR  = max(H_t − L_t, |H_t − C_{t−1}|, |L_t − C_{t−1}|)
    +DI = 100 · W(+DM) / W(TR),  −DI = 100 · W(−DM) / W(TR)   (W = Wilder smoothing, α = 1/period,
          seeded with the mean of the first ``period`` values — see :func:`wilder`)
    DX  = 100 · |+DI − −DI| / (+DI + −DI)
    ADX = W(DX)  (first value = mean of the first ``period`` DX values)

    The first DI is at bar ``period`` and the first ADX at bar ``2·period − 1`` (0-based),
    so ADX needs 2·period candles. Terms needing a missing previous candle are skipped
    by the smoothers. Degenerate cases are defined, not NaN: W(TR) = 0 (flat market)
    gives DI = 0, and +DI + −DI = 0 gives DX = 0.
    """
    o = valid_ohlc(grid)
    h, low, c = o["high"], o["low"], o["close"]
    up = h - h.shift(1)
    down = low.shift(1) - low
    valid = up.notna() & down.notna()
    plus_dm = up.where((up > down) & (up > 0), 0.0).where(valid)
    minus_dm = down.where((down > up) & (down > 0), 0.0).where(valid)
    prev_c = c.shift(1)
    tr = pd.concat([h - low, (h - prev_c).abs(), (low - prev_c).abs()], axis=1).max(axis=1, skipna=False)
    tr = tr.where(valid)
    str_ = wilder(tr, period)
    with np.errstate(divide="ignore", invalid="ignore"):
        pdi = (100.0 * wilder(plus_dm, period) / str_).where(str_ != 0, 0.0).where(str_.notna())
        mdi = (100.0 * wilder(minus_dm, period) / str_).where(str_ != 0, 0.0).where(str_.notna())
        total = pdi + mdi
        dx = (100.0 * (pdi - mdi).abs() / total).where(total != 0, 0.0).where(total.notna())
    frame = {"plus_di": pdi, "minus_di": mdi, "dx": dx, "adx": wilder(dx, period)}
    return pd.DataFrame(frame, index=grid.index)


# --------------------------------------------------------------------------- result


@dataclass
class TrendResult(ResultMixin):
    """Trend state at the last bar of one symbol.

    ``slope_per_bar`` is the OLS drift of ln(price) per bar; ``slope_annualized`` =
    slope_per_bar × periods_per_year (continuously compounded, log units). ``returns``
    maps each horizon label to a simple return. Crossovers list every cross in the
    input. ``insufficient_data`` is True when the slow averages or ADX are undefined.
    """

    interval: str
    bars: int
    window_start: int | None
    window_end: int | None
    insufficient_data: bool
    fast: int
    slow: int
    adx_period: int
    last_close: float | None = None
    sma_fast: float | None = None
    sma_slow: float | None = None
    ema_fast: float | None = None
    ema_slow: float | None = None
    sma_crossovers: list[dict[str, Any]] = field(default_factory=list)
    ema_crossovers: list[dict[str, Any]] = field(default_factory=list)
    slope_per_bar: float | None = None
    slope_annualized: float | None = None
    r_squared: float | None = None
    returns: dict[str, float | None] = field(default_factory=dict)
    adx: float | None = None
    plus_di: float | None = None
    minus_di: float | None = None


def compute_trend(
    candles: pd.DataFrame,
    interval: str,
    fast: int = 20,
    slow: int = 50,
    horizons: Sequence[int | str] | None = None,
    adx_period: int = 14,
) -> TrendResult:
    """Trend analytics for one symbol; default horizons: those of 1h, 4h, 1d, 7d, 30d fitting the interval."""
    if not 1 <= fast < slow:
        raise ValueError("need 1 <= fast < slow")
    if horizons is None:
        step = interval_ms(interval)
        horizons = [h for h in DEFAULT_HORIZONS if duration_ms(h) >= step and duration_ms(h) % step == 0]
    grid = to_grid(candles, interval)
    if grid.empty:
        return TrendResult(
            interval, 0, None, None, True, fast, slow, adx_period, returns=dict.fromkeys(map(str, horizons))
        )
    close = valid_ohlc(grid)["close"]
    s_fast, s_slow, e_fast, e_slow = sma(close, fast), sma(close, slow), ema(close, fast), ema(close, slow)
    slope, r2, _ = log_price_slope(close)
    adx_frame = adx(grid, adx_period)
    last_adx = adx_frame.iloc[-1]
    result = TrendResult(
        interval=interval,
        bars=int(close.notna().sum()),
        window_start=int(grid.index[0]),
        window_end=int(grid.index[-1]) + interval_ms(interval),
        insufficient_data=False,
        fast=fast,
        slow=slow,
        adx_period=adx_period,
        last_close=json_float(close.iloc[-1]),
        sma_fast=json_float(s_fast.iloc[-1]),
        sma_slow=json_float(s_slow.iloc[-1]),
        ema_fast=json_float(e_fast.iloc[-1]),
        ema_slow=json_float(e_slow.iloc[-1]),
        sma_crossovers=crossovers(s_fast, s_slow),
        ema_crossovers=crossovers(e_fast, e_slow),
        slope_per_bar=slope,
        slope_annualized=slope * periods_per_year(interval) if slope is not None else None,
        r_squared=r2,
        returns=horizon_returns(close, horizons, interval),
        adx=json_float(last_adx["adx"]),
        plus_di=json_float(last_adx["plus_di"]),
        minus_di=json_float(last_adx["minus_di"]),
    )
    result.insufficient_data = any(
        v is None for v in (result.sma_slow, result.ema_slow, result.adx, result.slope_per_bar)
    )
    return result
