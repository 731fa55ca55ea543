"""Funding-rate statistics and annualized funding, with the funding interval read from the data.

Binance funding intervals differ by symbol (8h, 4h, 1h) and change when a symbol hits
its rate cap, so the interval is never assumed: it is the median spacing of the
observed funding times, rounded to the whole minute (funding_time carries a few ms of
jitter). With fewer than two settled events it falls back to the spacing of the
distinct ``next_funding_time`` values of mark-price updates; failing that it is unknown
and the annualized figures are None.

events_per_year = 365 · 24 h / interval   (8h → 1095, 4h → 2190, 1h → 8760)
annualized      = Σ rate / Σ interval of each event × 365 · 24 h   (simple, not compounded)

The interval also changes over time for one symbol (Binance moves a symbol from 8h to 4h or
1h when its rate hits the cap, and back): :func:`interval_segments` splits the events where
the spacing changes for good (a single doubled spacing is a missing event, not a change), so
each event is annualized by the interval it was settled under, ``interval_ms`` is the
*current* one (the last segment) and ``interval_changes`` lists the segments. With one
interval throughout, ``annualized`` is the familiar mean rate × events_per_year.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dm_assets.analytics.volatility import MINUTE_MS, YEAR_MS, ResultMixin, json_float, numeric

__all__ = ["FundingResult", "compute_funding", "events_per_year", "funding_interval_ms", "interval_segments"]


def funding_interval_ms(times: pd.Series | np.ndarray) -> int | None:
    """Median spacing of distinct event times, rounded to the minute; None with < 2 times or zero spacing."""
    t = np.unique(np.asarray(times, dtype="int64"))
    if len(t) < 2:
        return None
    step = int(np.round(np.median(np.diff(t)) / MINUTE_MS)) * MINUTE_MS
    return step if step > 0 else None


def interval_segments(times: pd.Series | np.ndarray) -> list[tuple[int, int]]:
    """``[(first funding_time, interval ms), ...]``: where the funding spacing changed and stayed changed.

    A spacing that is a whole multiple of the current interval, seen once, is missing events
    (not a change); a new spacing that repeats, or one that is no multiple, starts a segment.
    """
    t = np.unique(np.asarray(times, dtype="int64"))
    if len(t) < 2:
        return []
    d = [int(x) for x in np.round(np.diff(t) / MINUTE_MS).astype("int64") * MINUTE_MS]
    cur = d[1] if len(d) > 1 and 0 < d[1] < d[0] and d[0] % d[1] == 0 else d[0]
    if cur <= 0:
        return []
    segs = [(int(t[0]), cur)]
    for i in range(1, len(d)):
        s = d[i]
        if s == cur or s <= 0:
            continue
        persists = i + 1 < len(d) and d[i + 1] == s
        if s % cur != 0 or persists:
            segs.append((int(t[i + 1]), s))
            cur = s
    return segs


def events_per_year(interval: int | None) -> float | None:
    """Funding events in a 365-day year for a spacing in ms (8h → 1095)."""
    return YEAR_MS / interval if interval else None


@dataclass
class FundingResult(ResultMixin):
    """Funding of one symbol over the settled events given (rates are fractions: 0.0001 = 0.01 %).

    ``std`` is the sample std (ddof = 1), None for fewer than 2 events. ``interval_source``
    says where the spacing came from (``funding_times``, ``mark_prices`` or None).
    ``predicted_rate`` is the latest mark-price funding rate (the estimate for the next
    settlement), annualized the same way.
    """

    count: int
    insufficient_data: bool
    window_start: int | None = None
    window_end: int | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    last: float | None = None
    last_time: int | None = None
    cumulative: float | None = None
    interval_ms: int | None = None
    interval_hours: float | None = None
    interval_source: str | None = None
    events_per_year: float | None = None
    annualized: float | None = None
    predicted_rate: float | None = None
    predicted_annualized: float | None = None
    next_funding_time: int | None = None
    interval_changes: list[dict[str, float | int]] | None = None


def compute_funding(funding_rates: pd.DataFrame | None, mark_prices: pd.DataFrame | None = None) -> FundingResult:
    """Stats of settled funding rates (``funding_time``, ``funding_rate``), annualized by observed spacing."""
    res = FundingResult(count=0, insufficient_data=True)
    realized: float | None = None  # Σ rate / Σ interval, annualized, when the spacing is known
    rates = pd.Series(dtype="float64")
    if funding_rates is not None and len(funding_rates):
        fr = funding_rates.drop_duplicates("funding_time", keep="last").sort_values("funding_time")
        fr = fr.assign(funding_rate=numeric(fr["funding_rate"])).dropna(subset=["funding_rate"])
        rates = fr["funding_rate"]
        if len(fr):
            segs = interval_segments(fr["funding_time"])
            res.interval_ms = segs[-1][1] if segs else None
            res.interval_source = "funding_times" if res.interval_ms else None
            if segs:
                res.interval_changes = [{"from": a, "interval_hours": b / 3_600_000} for a, b in segs]
                starts = np.array([a for a, _ in segs], dtype="int64")
                steps = np.array([b for _, b in segs], dtype="float64")
                times = fr["funding_time"].to_numpy(dtype="int64")
                per_event = steps[np.searchsorted(starts, times, side="right") - 1].clip(min=1)
                realized = float(rates.sum() / per_event.sum() * YEAR_MS)
            res.count = len(fr)
            res.window_start = int(fr["funding_time"].iloc[0])
            res.window_end = int(fr["funding_time"].iloc[-1])
            res.mean = json_float(rates.mean())
            res.std = json_float(rates.std(ddof=1)) if len(rates) >= 2 else None
            res.min = json_float(rates.min())
            res.max = json_float(rates.max())
            res.last = json_float(rates.iloc[-1])
            res.last_time = res.window_end
            res.cumulative = json_float(rates.sum())
    if mark_prices is not None and len(mark_prices):
        mp = mark_prices.sort_values("event_time", kind="stable")
        if res.interval_ms is None and "next_funding_time" in mp:
            res.interval_ms = funding_interval_ms(mp["next_funding_time"].dropna())
            res.interval_source = "mark_prices" if res.interval_ms else None
        if "funding_rate" in mp:
            predicted = numeric(mp["funding_rate"]).dropna()
            if len(predicted):
                res.predicted_rate = json_float(predicted.iloc[-1])
        if "next_funding_time" in mp and mp["next_funding_time"].notna().any():
            res.next_funding_time = int(mp["next_funding_time"].dropna().iloc[-1])
    res.events_per_year = events_per_year(res.interval_ms)
    res.interval_hours = res.interval_ms / 3_600_000 if res.interval_ms else None
    if res.events_per_year is not None:
        if res.mean is not None:
            res.annualized = json_float(realized) if realized is not None else res.mean * res.events_per_year
        if res.predicted_rate is not None:
            res.predicted_annualized = res.predicted_rate * res.events_per_year
    res.insufficient_data = res.count == 0 or res.annualized is None
    return res
