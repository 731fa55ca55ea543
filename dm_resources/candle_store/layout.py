"""How a time range becomes bucket documents (Arctic's ``Chunker``): UTC days, UTC years for 1d.

A bucket is one document per symbol × interval × UTC day (1d candles: per UTC year); its
``_id`` is readable and deterministic, so a date × symbol partition of a candle asset *is*
one bucket.
"""

from __future__ import annotations

import datetime as dt

from dm_resources.intervals import DAY_DIVIDING_INTERVAL_MS, DAY_MS

INTERVAL_MS = DAY_DIVIDING_INTERVAL_MS
YEAR_BUCKET_INTERVALS = frozenset({"1d"})


def step_ms(interval: str) -> int:
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        raise ValueError(f"unsupported candle interval {interval!r}; supported: {', '.join(INTERVAL_MS)}") from None


def bucket_bounds(interval: str, t_ms: int) -> tuple[int, int]:
    """``[start, end)`` of the bucket holding ``t_ms``: its UTC day, or its UTC year for 1d candles."""
    if interval in YEAR_BUCKET_INTERVALS:
        year = dt.datetime.fromtimestamp(t_ms / 1000, tz=dt.UTC).year
        lo = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
        hi = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
        return int(lo.timestamp() * 1000), int(hi.timestamp() * 1000)
    start = int(t_ms) - int(t_ms) % DAY_MS
    return start, start + DAY_MS


def bucket_id(symbol: str, interval: str, start: int) -> str:
    """``BTCUSDT:1m:2026-03-10`` (1d: ``BTCUSDT:1d:2026``): readable, deterministic, one per partition."""
    day = dt.datetime.fromtimestamp(start / 1000, tz=dt.UTC).date()
    label = str(day.year) if interval in YEAR_BUCKET_INTERVALS else day.isoformat()
    return f"{symbol}:{interval}:{label}"


def bucket_starts(interval: str, start: int, end: int) -> list[tuple[int, int]]:
    """Every bucket ``[b_start, b_end)`` touching ``[start, end)``, ascending."""
    out: list[tuple[int, int]] = []
    t = bucket_bounds(interval, start)[0]
    while t < end:
        b_start, b_end = bucket_bounds(interval, t)
        out.append((b_start, b_end))
        t = b_end
    return out
