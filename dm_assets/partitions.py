"""Partitions as module constants: date (daily, UTC) × symbol (dynamic).

Symbols are a dynamic partition set so that a symbol first seen on the bus (or added
to ``DM_SYMBOLS``) becomes backfillable from the UI without a code change; the
symbol-discovery sensor keeps it in step with the data.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
)

from dm_resources.contracts import DATE_DIM, SYMBOL_DIM, SYMBOLS_PARTITIONS_NAME
from dm_resources.intervals import DAY_MS
from dm_resources.settings import get_settings

# Whether sensors and schedules start running (DM_AUTOMATION); the UI can still toggle each.
AUTOMATION_STATUS = "RUNNING" if get_settings().automation else "STOPPED"

# end_offset=1 makes today a partition too: the scheduled audit and the gap sensor
# work on the current day while it fills.
DATE_PARTITIONS = DailyPartitionsDefinition(
    start_date=get_settings().partition_start.isoformat(), timezone="UTC", end_offset=1
)
SYMBOL_PARTITIONS = DynamicPartitionsDefinition(name=SYMBOLS_PARTITIONS_NAME)
DATE_SYMBOL_PARTITIONS = MultiPartitionsDefinition({DATE_DIM: DATE_PARTITIONS, SYMBOL_DIM: SYMBOL_PARTITIONS})


def partition_key(day: dt.date | str, symbol: str) -> MultiPartitionKey:
    return MultiPartitionKey({DATE_DIM: day if isinstance(day, str) else day.isoformat(), SYMBOL_DIM: symbol})


def day_bounds_ms(day: str | dt.date) -> tuple[int, int]:
    """[start, end) of a UTC day in epoch ms."""
    d = dt.date.fromisoformat(day) if isinstance(day, str) else day
    start = int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)
    return start, start + DAY_MS


def split_key(key: str | MultiPartitionKey) -> tuple[str, str]:
    """(date, symbol) of a date×symbol key, whatever form it arrives in."""
    if isinstance(key, MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims[DATE_DIM], dims[SYMBOL_DIM]
    date, symbol = str(key).split("|")  # dimensions are ordered by name: date|symbol
    return date, symbol
