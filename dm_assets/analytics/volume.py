"""Volume analytics: totals, moving averages, taker flow, spikes and VWAP.

Candles go on the open_time grid (see :mod:`volatility`); a missing candle is *not*
zero volume (Binance emits zero-volume candles for quiet minutes, so an absent one is
unknown data). Totals sum the present candles; a simple moving average whose window
holds a missing candle is undefined; the EMA skips missing candles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dm_assets.analytics.trend import ema, sma
from dm_assets.analytics.volatility import ResultMixin, interval_ms, json_float, to_grid

__all__ = ["VolumeResult", "compute_volume", "spike_ratio", "taker_flow", "volume_ema", "volume_sma", "vwap"]


def volume_sma(volume: pd.Series, n: int) -> pd.Series:
    """Mean volume of the last n bars (current included)."""
    return sma(volume, n)


def volume_ema(volume: pd.Series, n: int) -> pd.Series:
    """EMA with α = 2/(n+1); seed = SMA of the first n present bars, first value at the n-th bar."""
    return ema(volume, n)


def spike_ratio(volume: pd.Series, n: int) -> pd.Series:
    """volume_t / mean(volume_{t−n} … volume_{t−1}): the current bar against the n bars *before* it.

    Excluding the current bar keeps a spike from diluting its own baseline. Undefined
    (NaN) when the baseline window is incomplete or its mean is 0 (no baseline to compare).
    """
    baseline = volume.shift(1).rolling(n, min_periods=n).mean()
    return (volume / baseline).where(baseline > 0)


def taker_flow(grid: pd.DataFrame) -> pd.DataFrame:
    """Taker buy volume (``taker_buy_volume``), taker sell volume (volume − buy) and delta (buy − sell)."""
    vol = grid["volume"] if "volume" in grid else pd.Series(np.nan, index=grid.index)
    buy = grid["taker_buy_volume"] if "taker_buy_volume" in grid else pd.Series(np.nan, index=grid.index)
    sell = vol - buy
    return pd.DataFrame({"buy": buy, "sell": sell, "delta": buy - sell}, index=grid.index)


def vwap(grid: pd.DataFrame) -> tuple[float | None, str | None]:
    """Volume-weighted average price over the present candles, and how it was obtained.

    VWAP = Σ notional / Σ volume, where a candle's notional is its ``quote_volume`` — the
    exact Σ price·qty of its trades, so the result is the true VWAP of every trade — or,
    for candles without a quote volume, the typical price (H + L + C)/3 × volume (an
    approximation). Method is ``quote_volume``, ``typical`` or ``mixed``. None when the
    total volume is 0 or there is no data.
    """
    if grid.empty or "volume" not in grid:
        return None, None
    vol = grid["volume"]
    present = vol.notna()
    quote = grid["quote_volume"] if "quote_volume" in grid else pd.Series(np.nan, index=grid.index)
    typical = (grid["high"] + grid["low"] + grid["close"]) / 3.0 * vol
    has_quote = quote.notna() & present
    notional = quote.where(has_quote, typical)
    used = present & notional.notna()
    total_vol = float(vol[used].sum())
    if not used.any() or total_vol <= 0:
        return None, None
    n_quote = int((has_quote & used).sum())
    method = "quote_volume" if n_quote == int(used.sum()) else ("typical" if n_quote == 0 else "mixed")
    return json_float(float(notional[used].sum()) / total_vol), method


@dataclass
class VolumeResult(ResultMixin):
    """Volume of one symbol over the input period, with moving averages at its last bar.

    ``sma``/``ema``/``spike_ratio`` are at the last bar for ``window`` bars;
    ``max_spike_ratio``/``max_spike_time`` are the largest spike in the period.
    ``taker_buy_ratio`` = buy / total volume. ``insufficient_data`` is True when the
    input has fewer than window + 1 candles (no spike baseline) or the last window has a gap.
    """

    interval: str
    window: int
    bars: int
    missing_bars: int
    window_start: int | None
    window_end: int | None
    insufficient_data: bool
    total_volume: float | None = None
    total_quote_volume: float | None = None
    total_trades: int | None = None
    last_volume: float | None = None
    sma: float | None = None
    ema: float | None = None
    spike_ratio: float | None = None
    max_spike_ratio: float | None = None
    max_spike_time: int | None = None
    taker_buy_volume: float | None = None
    taker_sell_volume: float | None = None
    taker_delta: float | None = None
    taker_buy_ratio: float | None = None
    vwap: float | None = None
    vwap_method: str | None = None


def compute_volume(candles: pd.DataFrame, interval: str, window: int = 20) -> VolumeResult:
    """Volume analytics for one symbol over all candles given, averages over ``window`` bars."""
    if window < 1:
        raise ValueError("window must be >= 1")
    grid = to_grid(candles, interval)
    if grid.empty or "volume" not in grid:
        return VolumeResult(interval, window, 0, 0, None, None, True)
    vol = grid["volume"]
    present = int(vol.notna().sum())
    flow = taker_flow(grid)
    spikes = spike_ratio(vol, window)
    price, method = vwap(grid)
    buy = _sum(flow["buy"])
    total = _sum(vol)
    max_spike_time = int(spikes.idxmax()) if spikes.notna().any() else None
    res = VolumeResult(
        interval=interval,
        window=window,
        bars=present,
        missing_bars=len(grid) - present,
        window_start=int(grid.index[0]),
        window_end=int(grid.index[-1]) + interval_ms(interval),
        insufficient_data=False,
        total_volume=total,
        total_quote_volume=_sum(grid["quote_volume"]) if "quote_volume" in grid else None,
        total_trades=int(grid["trades"].sum()) if "trades" in grid and grid["trades"].notna().any() else None,
        last_volume=json_float(vol.iloc[-1]),
        sma=json_float(volume_sma(vol, window).iloc[-1]),
        ema=json_float(volume_ema(vol, window).iloc[-1]),
        spike_ratio=json_float(spikes.iloc[-1]),
        max_spike_ratio=json_float(spikes.max()) if max_spike_time is not None else None,
        max_spike_time=max_spike_time,
        taker_buy_volume=buy,
        taker_sell_volume=_sum(flow["sell"]),
        taker_delta=_sum(flow["delta"]),
        taker_buy_ratio=(buy / total) if buy is not None and total else None,
        vwap=price,
        vwap_method=method,
    )
    res.insufficient_data = res.sma is None or len(grid) < window + 1
    return res


def _sum(series: pd.Series) -> float | None:
    """Sum of present values; None when there are none (unknown, not zero)."""
    return json_float(series.sum()) if series.notna().any() else None
