"""Binance USD-M futures kline intervals and their UTC bucket alignment.

Why a module of its own: the REST client, the fake exchange, the candle derivation
and the analytics must agree to the millisecond on where a bucket starts and ends,
or a derived 1w candle silently covers Thursday-to-Wednesday.

* ``1m`` … ``3d`` are fixed lengths aligned on the Unix epoch: the bucket of ``ts``
  starts at ``ts - ts % length``. :data:`INTERVAL_MS` holds exactly these, so floor
  division by a value taken from it is always correct.
* ``1w`` is seven days but starts on Monday 00:00 UTC (the epoch was a Thursday),
  so it is *not* in :data:`INTERVAL_MS`; :func:`interval_length_ms` gives its length.
* ``1M`` starts on the 1st of each month, 00:00 UTC, and has no fixed length.
* There is no ``1s`` on futures (spot only).

A bucket is ``[open_time, next_open)``; Binance reports ``close_time = next_open - 1``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
# 1970-01-05 was the first Monday after the epoch.
_WEEK_OFFSET_MS = 4 * DAY_MS

#: Epoch-aligned fixed-length intervals (bucket start = ``ts - ts % ms``).
INTERVAL_MS: dict[str, int] = {
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
}
#: The fixed-length intervals that divide a UTC day (1m … 1d): a day's buckets of these are whole.
DAY_DIVIDING_INTERVAL_MS: dict[str, int] = {iv: ms for iv, ms in INTERVAL_MS.items() if DAY_MS % ms == 0}
CALENDAR_INTERVALS: tuple[str, ...] = ("1w", "1M")
#: Every interval Binance USD-M futures serves, shortest first.
VALID_INTERVALS: tuple[str, ...] = (*INTERVAL_MS, *CALENDAR_INTERVALS)


def validate_interval(interval: str) -> str:
    """Return ``interval`` unchanged if futures serves it, else a ValueError listing the valid ones.

    Case matters: ``1m`` is a minute and ``1M`` a month, so nothing is normalised.
    """
    if interval not in VALID_INTERVALS:
        hint = " (1s exists on spot only, not on futures)" if interval == "1s" else ""
        raise ValueError(
            f"unsupported kline interval {interval!r}{hint}; valid intervals: {', '.join(VALID_INTERVALS)}"
        )
    return interval


def interval_length_ms(interval: str) -> int:
    """Fixed length of an interval in ms (``1w`` included); ``1M`` has none and is refused."""
    validate_interval(interval)
    if interval == "1w":
        return WEEK_MS
    if interval == "1M":
        raise ValueError("1M has no fixed length (calendar months); use bucket_start/next_bucket_start")
    return INTERVAL_MS[interval]


def _month_start(ts_ms: int) -> int:
    d = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC)
    return int(dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC).timestamp()) * 1000


def _add_months(month_start_ms: int, months: int) -> int:
    d = dt.datetime.fromtimestamp(month_start_ms / 1000, tz=dt.UTC)
    idx = d.year * 12 + (d.month - 1) + months
    return int(dt.datetime(idx // 12, idx % 12 + 1, 1, tzinfo=dt.UTC).timestamp()) * 1000


def bucket_start(ts_ms: int, interval: str) -> int:
    """Open time of the ``interval`` bucket containing ``ts_ms`` (UTC, Binance alignment)."""
    validate_interval(interval)
    if interval == "1M":
        return _month_start(ts_ms)
    if interval == "1w":
        return ts_ms - (ts_ms - _WEEK_OFFSET_MS) % WEEK_MS
    step = INTERVAL_MS[interval]
    return ts_ms - ts_ms % step


def next_bucket_start(open_time_ms: int, interval: str) -> int:
    """Open time of the bucket after the one containing ``open_time_ms``."""
    start = bucket_start(open_time_ms, interval)
    if interval == "1M":
        return _add_months(start, 1)
    return start + interval_length_ms(interval)


def close_time(open_time_ms: int, interval: str) -> int:
    """Binance's ``close_time`` of the bucket: next open − 1 ms (the bucket is ``[open, next)``)."""
    return next_bucket_start(open_time_ms, interval) - 1


def bucket_starts(start_ms: int, end_ms: int, interval: str) -> Iterator[int]:
    """Open times of the buckets with ``start_ms <= open_time < end_ms``, ascending."""
    t = bucket_start(start_ms, interval)
    if t < start_ms:
        t = next_bucket_start(t, interval)
    while t < end_ms:
        yield t
        t = next_bucket_start(t, interval)


def max_buckets(start_ms: int, end_ms: int, interval: str) -> int:
    """Upper bound on the number of bucket opens in ``[start_ms, end_ms)``, in O(1).

    Exact for fixed-length intervals; for ``1M`` it assumes 28-day months, which can
    only overestimate. Used to ask the exchange for no more rows than can exist.
    """
    if end_ms <= start_ms:
        return 0
    if interval == "1M":
        return (end_ms - start_ms) // (28 * DAY_MS) + 1
    step = interval_length_ms(interval)
    first = bucket_start(start_ms, interval)
    if first < start_ms:
        first += step
    if first >= end_ms:
        return 0
    return (end_ms - 1 - first) // step + 1
