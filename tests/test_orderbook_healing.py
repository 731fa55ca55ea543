"""Past-day gaps: a day a later stored snapshot can heal is healed by the next run; one no stored snapshot can
heal is labelled unrecoverable (check metadata, audit row, health reason) and the sensor stops asking for it."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterInstance, SensorResult, build_sensor_context, materialize

from dm_assets.orderbook import build, checkpoint, healing, report
from dm_assets.orderbook.assets import orderbook_snapshots
from dm_assets.orderbook.sensors import heal_decisions, orderbook_heal_sensor
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from dm_resources.settings import load_settings
from tests.book_sim import BookMarket, diff_document, snapshot_document

TODAY = dt.datetime.now(dt.UTC).date()
DAY = (TODAY - dt.timedelta(days=1)).isoformat()  # yesterday: the sensor's own clock looks at it
START, END = day_bounds_ms(DAY)
HEALED, LOST = "BTCUSDT", "ETHUSDT"
BREAK = range(400, 406)  # diffs that never reached the store, ~3 minutes before midnight


def _seed(store: MongoStore, symbol: str, market: BookMarket, events: range, snaps: list[int]) -> None:
    store.insert_idempotent(
        "depth_updates", [diff_document(symbol, market.events[i].diff) for i in events if i not in BREAK]
    )
    store.insert_idempotent("depth_snapshots", [snapshot_document(symbol, market.snapshot_after(i)) for i in snaps])


def test_a_past_day_is_healed_while_a_snapshot_can_and_labelled_unrecoverable_when_none_can(
    mongo_store: MongoStore, sqlite_metadata_url: str, instance: DagsterInstance
) -> None:
    market = BookMarket(seed=31, start_ms=END - 6 * 60_000)
    market.run(1300)  # to ~4 minutes past midnight: the day's tail is proven
    assert market.events[-1].diff.event_time > END + build.TAIL_MS
    live_run = market.events[550].diff.event_time + 200  # the last run while the day was current
    for symbol in (HEALED, LOST):
        _seed(mongo_store, symbol, market, range(0, 551), [20])
        day = build.build_orderbook_day(mongo_store, symbol, DAY, now=live_run)
        assert [s["status"] for s in day.spans()] == ["open"] and not day.final
    # After that run, more diffs arrive; for HEALED also a snapshot taken live, after the break.
    _seed(mongo_store, HEALED, market, range(551, 1300), [650])
    _seed(mongo_store, LOST, market, range(551, 1300), [])
    # The sensor: both days were last rebuilt before they were final, so both may still heal.
    decisions = {d.symbol: d for d in heal_decisions(mongo_store, [HEALED, LOST], TODAY) if d.day == DAY}
    assert decisions[HEALED].request and decisions[LOST].request
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [HEALED, LOST])
    res = ResourceSet(
        load_settings(mongo_url=mongo_store.url, mongo_db=mongo_store.db_name, metadata_url=sqlite_metadata_url)
    )
    with build_sensor_context(instance=instance, resources={"mongo": res.mongo}) as ctx:
        ticked = orderbook_heal_sensor(ctx)
    assert isinstance(ticked, SensorResult)
    assert {r.partition_key for r in ticked.run_requests or []} >= {
        partition_key(DAY, HEALED),
        partition_key(DAY, LOST),
    }

    # The runs the sensor asked for, after the day is final.
    final_run = {"dm/as_of": str(END + 10 * 60_000)}
    healed = build.build_orderbook_day(mongo_store, HEALED, DAY, now=END + 10 * 60_000)
    (span,) = healed.spans()
    assert span["status"] == "healed" and span["end"] == market.events[650].diff.event_time
    assert healed.final and healed.unrecoverable_ms == 0
    result = materialize(
        [orderbook_snapshots],
        instance=instance,
        partition_key=partition_key(DAY, LOST),
        resources=res.as_dict(),
        tags=final_run,
    )
    (check,) = result.get_asset_check_evaluations()
    gap = END - market.events[399].diff.event_time
    assert not check.passed and check.metadata["unrecoverable_seconds"].value == gap / 1000
    assert "continuity break" in check.metadata["unrecoverable"].value[0]
    meta = MetadataStore(sqlite_metadata_url)
    try:
        audit = meta.audit_logs(LOST, check_name=report.CHECK_NAME)
        assert audit and "UNRECOVERABLE" in (audit[0].message or "")
        assert [s["status"] for s in audit[0].details["spans"]] == ["unrecoverable"]  # type: ignore[index]
        (health,) = meta.health(symbol=LOST, interval=report.HEALTH_INTERVAL)
        assert health.score < 100 and "UNRECOVERABLE" in health.details["reason"]  # type: ignore[index]
        assert "no stored snapshot re-syncs it" in health.details["reason"]  # type: ignore[index]
    finally:
        meta.close()

    # Both days are final now: the sensor asks for neither again.
    decisions = {d.symbol: d for d in heal_decisions(mongo_store, [HEALED, LOST], TODAY) if d.day == DAY}
    assert not decisions[HEALED].request and not decisions[LOST].request
    assert decisions[LOST].reason == "final: 1 unrecoverable span(s), not requested again"
    with build_sensor_context(instance=instance, resources={"mongo": res.mongo}) as ctx:
        again = orderbook_heal_sensor(ctx)
    assert isinstance(again, SensorResult)
    assert DAY not in {str(r.partition_key) for r in again.run_requests or []}
    # A final day keeps its outcome, not its checkpoint: nothing continues it.
    assert checkpoint.load(mongo_store, LOST, DAY) is None and checkpoint.summaries(mongo_store, LOST, START, END)


def test_heal_decisions_for_a_day_never_rebuilt_depend_on_stored_snapshots() -> None:
    asked = healing.decide("2026-03-10", HEALED, None, lambda: True)
    assert asked.request and asked.run_key == f"orderbook-heal:{HEALED}:2026-03-10:never"
    idle = healing.decide("2026-03-10", HEALED, None, lambda: False)
    assert not idle.request and "nothing to build from" in idle.reason
    open_day = healing.decide("2026-03-10", HEALED, {"final": False, "as_of": 5, "spans": []}, lambda: False)
    assert open_day.request and open_day.run_key == f"orderbook-heal:{HEALED}:2026-03-10:5"
    assert healing.past_days(dt.date(2026, 1, 2), first=dt.date(2026, 1, 1)) == ["2026-01-01"]
