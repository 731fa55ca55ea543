"""Order-book runs that cost what changed: a run continues from the stored checkpoint and reaches exactly
what a replay of the whole day reaches, break between runs included; a checkpoint that does not match the
stored diffs is refused (full replay, audit row). Real SecantusDB; the simulated market is the truth."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, materialize

from dm_assets.orderbook import build, checkpoint, report
from dm_assets.orderbook.assets import orderbook_snapshots
from dm_assets.orderbook.book import Snapshot
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from dm_resources.settings import load_settings
from tests.book_sim import BookMarket, diff_document, snapshot_document

DAY = "2026-03-10"
START, END = day_bounds_ms(DAY)
SYMBOL = "BTCUSDT"


@pytest.fixture
def twin(mongo_store: MongoStore) -> Iterator[MongoStore]:
    """A second database on the same server: the same inputs, rebuilt by full replays only."""
    store = MongoStore(mongo_store.url, f"t_{uuid.uuid4().hex[:12]}")
    store.ensure_indexes()
    yield store
    store.client.drop_database(store.db_name)
    store.close()


def _store(stores: list[MongoStore], market: BookMarket, events: range, lost: set[int], snaps: list[int]) -> None:
    for s in stores:
        s.insert_idempotent(
            "depth_updates", [diff_document(SYMBOL, market.events[i].diff) for i in events if i not in lost]
        )
        s.insert_idempotent("depth_snapshots", [snapshot_document(SYMBOL, market.snapshot_after(i)) for i in snaps])


def _rows(store: MongoStore) -> list[dict]:
    return store.read_range("orderbook_snapshots", SYMBOL, START, END)


def test_runs_from_the_checkpoint_equal_full_replays_with_a_break_between_two_runs(
    mongo_store: MongoStore, twin: MongoStore
) -> None:
    market = BookMarket(seed=21, start_ms=START - 5 * 60_000)
    market.run(3000)  # ~25 minutes, about one event every 500 ms
    ev = market.events
    lost = set(range(1300, 1306))  # stored after run 1, never: a break between runs 1 and 2
    phases = [
        (range(0, 1000), [100], ev[999].diff.event_time + 200),  # the warm-up snapshot before midnight
        (range(1000, 2000), [1500], ev[1999].diff.event_time + 200),  # the re-sync after the break
        (range(2000, 3000), [2500], END + 3_600_000),  # then the day is over: final
    ]
    incremental_reads, full_reads = [], []
    for i, (events, snaps, now) in enumerate(phases):
        _store([mongo_store, twin], market, events, lost, snaps)
        before = checkpoint.load(mongo_store, SYMBOL, DAY)
        inc = build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=now)
        full = build.build_orderbook_day(twin, SYMBOL, DAY, now=now, use_checkpoint=False)
        expected = "full" if before is None else f"resumed from checkpoint u {before.state.prev_u}"
        assert (inc.replay, full.replay, inc.checkpoint_mismatch) == (expected, "full", None)
        assert inc.stats == full.stats, f"run {i + 1}: the continuation and the full replay disagree"
        assert inc.window == full.window and inc.spans() == full.spans() and inc.final == full.final
        assert _rows(mongo_store) == _rows(twin), f"run {i + 1}: stored rows differ"
        incremental_reads.append(inc.diffs_read)
        full_reads.append(full.diffs_read)
    assert inc.stats.breaks == 1 and inc.stats.resyncs == 1 and inc.final
    span, tail = inc.spans()  # the break, healed by the re-sync; and the rest of the day, where the diffs stop
    assert tail["status"] == "unrecoverable" and tail["start"] == ev[-1].diff.event_time and tail["end"] == END
    assert span["status"] == "healed" and span["start"] == ev[1299].diff.event_time
    assert span["end"] == ev[1500].diff.event_time and "continuity break" in span["reason"]
    # Later runs read what changed since the checkpoint, not the day so far.
    assert incremental_reads[1] < full_reads[1] * 0.7 and incremental_reads[2] < full_reads[2] * 0.5
    # The truth: every stored row is the book the simulated exchange held at that instant.
    for r in _rows(mongo_store):
        bids, asks = market.truth_at(r["snapshot_time"])
        assert [(p.to_decimal(), q.to_decimal()) for p, q in r["bids"]] == bids
        assert [(p.to_decimal(), q.to_decimal()) for p, q in r["asks"]] == asks


def test_a_checkpoint_that_does_not_match_the_stored_diffs_means_a_full_replay_and_an_audit_row(
    mongo_store: MongoStore, twin: MongoStore, sqlite_metadata_url: str, instance: DagsterInstance
) -> None:
    market = BookMarket(seed=22, start_ms=START - 5 * 60_000)
    market.run(1600)
    _store([mongo_store, twin], market, range(0, 1000), set(), [100])
    build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=market.events[999].diff.event_time + 200)
    cp = checkpoint.load(mongo_store, SYMBOL, DAY)
    assert cp is not None and cp.state.book is not None and cp.state.position is not None
    # The diff right after the checkpoint goes missing from the store: the checkpoint cannot continue.
    after = next(i for i, e in enumerate(market.events) if e.diff.final_id > cp.state.prev_u)
    _store([mongo_store, twin], market, range(1000, 1600), set(), [1200])
    for s in (mongo_store, twin):
        s.collection("depth_updates").delete_one({"_id": f"{SYMBOL}:{market.events[after].diff.final_id}"})
    res = ResourceSet(
        load_settings(mongo_url=mongo_store.url, mongo_db=mongo_store.db_name, metadata_url=sqlite_metadata_url)
    )
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    now = market.events[-1].diff.event_time + 200  # still the current day
    result = materialize(
        [orderbook_snapshots],
        instance=instance,
        partition_key=partition_key(DAY, SYMBOL),
        resources=res.as_dict(),
        tags={"dm/as_of": str(now)},
        run_config={"ops": {"orderbook__orderbook_snapshots": {"config": {"take_snapshot": False}}}},
    )
    detail = result.asset_materializations_for_node("orderbook__orderbook_snapshots")[0].metadata["detail"].value
    assert detail["replay"] == "full" and "a diff missing after it" in detail["checkpoint_mismatch"]
    full = build.build_orderbook_day(twin, SYMBOL, DAY, now=now, use_checkpoint=False)
    assert _rows(mongo_store) == _rows(twin) and detail["breaks"] == full.stats.breaks == 1
    meta = MetadataStore(sqlite_metadata_url)
    try:
        (row,) = meta.audit_logs(SYMBOL, check_name=report.CHECKPOINT_CHECK_NAME)
        assert not row.passed and row.severity == "WARN" and "replayed the day in full" in (row.message or "")
        assert row.partition_key == f"{DAY}|{SYMBOL}" and row.details == {
            "event": "checkpoint_mismatch",
            "reason": detail["checkpoint_mismatch"],
        }
    finally:
        meta.close()
    # A checkpoint whose own diff is no longer stored as it was is refused too.
    state_u = checkpoint.load(mongo_store, SYMBOL, DAY).state.position[1]  # type: ignore[union-attr,index]
    mongo_store.collection("depth_updates").update_one({"_id": f"{SYMBOL}:{state_u}"}, {"$inc": {"event_time": 1}})
    again = build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=now + 1_000)
    assert again.replay == "full" and "no longer stored as it was" in (again.checkpoint_mismatch or "")


def test_a_checkpoint_of_other_settings_is_not_continued(mongo_store: MongoStore) -> None:
    market = BookMarket(seed=23, start_ms=START - 5 * 60_000)
    market.run(800)
    _store([mongo_store], market, range(0, 800), set(), [100])
    now = market.events[-1].diff.event_time + 200
    build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=now)
    assert build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=now).replay.startswith("resumed")
    other = build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=now, depth=5)
    assert other.replay == "full" and other.checkpoint_mismatch is None  # a settings change, not a data problem


def test_own_snapshot_starts_a_first_days_history_instead_of_a_dark_day(mongo_store: MongoStore) -> None:
    """A symbol's first run: the snapshot it just took is newer than the run's instant; the day is not dark."""
    market = BookMarket(seed=24, start_ms=START + 3_600_000)
    market.run(600)
    _store([mongo_store], market, range(0, 400), set(), [])
    now = market.events[399].diff.event_time + 100
    # Taken after the run's instant: the exchange's book had moved on by then (event 405).
    own = market.snapshot_after(405)
    mongo_store.insert_idempotent("depth_snapshots", [snapshot_document(SYMBOL, own)])
    first = build.build_orderbook_day(
        mongo_store, SYMBOL, DAY, now=now, own_snapshot=Snapshot(own.last_update_id, own.time)
    )
    assert first.window_ms == 0 and first.passed and first.stats.invalid_ms == 0 and first.history_start == now
    # Diffs after it arrive; the next run syncs and judges the book from that first sync on.
    _store([mongo_store], market, range(400, 600), set(), [])
    later = build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=market.events[-1].diff.event_time + 100)
    assert later.history_start == market.events[405].diff.event_time == later.window[0]
    assert later.passed and later.health()["score"] == 100.0 and later.documents > 0
    # Without the rule, the first day would be dark from midnight: a full window that fails.
    assert later.stats.dropped_before_sync == 405 and later.stats.invalid_ms == 0
