"""The healing sensor: rebuilds past days a stored snapshot can still heal, and leaves final days alone."""

from __future__ import annotations

import datetime as dt

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, sensor

from dm_assets.orderbook import checkpoint, healing
from dm_assets.orderbook.jobs import orderbook_job
from dm_assets.partitions import AUTOMATION_STATUS, SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_resources.contracts import now_ms
from dm_resources.mongo import MongoStore
from dm_resources.resources import MongoResource
from dm_resources.settings import get_settings


def heal_decisions(store: MongoStore, symbols: list[str], today: dt.date) -> list[healing.HealDecision]:
    """One decision per past day in the lookback × symbol, from the days' stored summaries."""
    days = healing.past_days(today, first=get_settings().partition_start)
    if not days:
        return []
    lo, hi = day_bounds_ms(days[0])[0], day_bounds_ms(today)[0]
    out = []
    for symbol in symbols:
        by_day = {s["day"]: s["summary"] for s in checkpoint.summaries(store, symbol, lo, hi) if "summary" in s}
        for day in days:

            def has_snapshots(day: str = day, symbol: str = symbol) -> bool:
                a, b = day_bounds_ms(day)
                return bool(store.read_range("depth_snapshots", symbol, a, b, limit=1, projection={"_id": 1}))

            out.append(healing.decide(day, symbol, by_day.get(day), has_snapshots))
    return out


@sensor(
    name="orderbook_heal_sensor",
    job=orderbook_job,
    minimum_interval_seconds=120,
    default_status=DefaultSensorStatus(AUTOMATION_STATUS),
    description=(
        f"Looks at the last {healing.LOOKBACK_DAYS} days × symbols of the order book and requests a rebuild of each "
        "day whose last rebuild ran before its diffs were all in (a stored snapshot may still heal it). A day "
        "rebuilt once it was final is never requested again: what it lacks no stored snapshot can heal "
        "(unrecoverable)."
    ),
)
def orderbook_heal_sensor(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
    symbols = sorted(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    today = dt.datetime.fromtimestamp(now_ms() / 1000, tz=dt.UTC).date()
    decisions = heal_decisions(mongo.get_store(), symbols, today)
    requests = [
        RunRequest(
            run_key=d.run_key,
            partition_key=partition_key(d.day, d.symbol),
            tags={"dm/origin": "sensor", "dm/heal": d.reason[:200]},
        )
        for d in decisions
        if d.request
    ]
    for d in decisions:
        context.log.info(f"{d.day}|{d.symbol}: {'rebuild' if d.request else 'no run'}: {d.reason}")
    if not requests:
        return SensorResult(skip_reason=f"{len(decisions)} past partitions: none can be healed by a rebuild")
    return SensorResult(run_requests=requests)
