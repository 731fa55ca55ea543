"""The order book every 5 minutes: today's partition per symbol (and yesterday's just after midnight)."""

from __future__ import annotations

import datetime as dt

from dagster import RunRequest

from dm_assets.orderbook.jobs import orderbook_job
from dm_assets.partitions import partition_key
from dm_assets.schedules import per_symbol_schedule

# Yesterday's last minutes are proven only by diffs after midnight: the first ticks of a day
# rebuild yesterday once more so its tail is written and its verdict is final.
FINALIZE_AFTER_MIDNIGHT = dt.timedelta(minutes=10)


def orderbook_requests(symbols: list[str], when: dt.datetime) -> list[RunRequest]:
    when = when.astimezone(dt.UTC)
    day = when.date()
    days = [day]
    if when - dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) < FINALIZE_AFTER_MIDNIGHT:
        days.insert(0, day - dt.timedelta(days=1))
    tick = when.strftime("%Y%m%dT%H%M")
    return [
        RunRequest(
            run_key=f"orderbook:{s}:{d.isoformat()}:{tick}",
            partition_key=partition_key(d, s),
            tags={"dm/origin": "schedule"},
        )
        for d in days
        for s in symbols
    ]


orderbook_schedule = per_symbol_schedule(
    "orderbook_schedule",
    orderbook_job,
    "*/5 * * * *",
    "Every 5 minutes: a REST depth snapshot and a rebuild of today's book for every symbol.",
    orderbook_requests,
)
