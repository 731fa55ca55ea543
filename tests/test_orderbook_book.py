"""Order-book reconstruction (pure functions): snapshot + diffs, breaks, re-syncs, crossed books."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dm_assets.orderbook.book import Diff, OrderBook, Replay, Snapshot, TopOfBook, reconstruct
from tests.book_sim import BookMarket

D = Decimal


def _check_against_truth(market: BookMarket, tops: list[TopOfBook]) -> None:
    assert tops, "nothing emitted"
    for top in tops:
        bids, asks = market.truth_at(top.time)
        assert list(top.bids) == bids, f"bids differ at {top.time}"
        assert list(top.asks) == asks, f"asks differ at {top.time}"
        assert top.bids[0][0] < top.asks[0][0]


def test_clean_replay_matches_the_true_book_and_drops_events_before_the_snapshot() -> None:
    m = BookMarket(seed=1)
    events = m.run(600)
    snap = m.snapshot_after(30)
    start = events[0].diff.event_time
    end = events[-1].diff.event_time
    tops, stats = reconstruct([snap], [e.diff for e in events], start, end)
    # Events 0..29 have u < L and are dropped; event 30 (U <= L <= u) is the first applied.
    assert stats.dropped_before_sync == 30
    assert stats.syncs == 1 and stats.resyncs == 0 and stats.breaks == 0 and stats.crossed == 0
    assert stats.applied == 570
    _check_against_truth(m, tops)
    # Grid: every 10 s from the first event after the sync to the last proven event.
    assert [t.time % 10_000 for t in tops] == [0] * len(tops)
    assert tops[0].time >= events[30].diff.event_time
    assert tops[-1].time < events[-1].diff.event_time
    # No valid book before the sync: counted as invalid time, the rest as valid.
    assert stats.invalid_intervals == [(start, events[30].diff.event_time, "no snapshot synced yet")]
    assert stats.invalid_ms == events[30].diff.event_time - start
    assert stats.valid_ms == end - events[30].diff.event_time


def test_pu_break_invalidates_until_the_next_snapshot_then_resyncs_to_the_truth() -> None:
    m = BookMarket(seed=2)
    events = m.run(800)
    lost = set(range(300, 320))  # messages that never reached the store
    stored = [e.diff for i, e in enumerate(events) if i not in lost]
    snaps = [m.snapshot_after(10), m.snapshot_after(200), m.snapshot_after(400)]
    start, end = events[0].diff.event_time, events[-1].diff.event_time
    tops, stats = reconstruct(snaps, stored, start, end)
    assert stats.breaks == 1 and stats.resyncs == 1 and stats.syncs == 2
    assert stats.snapshots_used == 2  # the snapshot at event 200 predates the break and is skipped
    _check_against_truth(m, tops)
    # The lost interval: from the last event before the gap to the first event applied after the re-sync.
    broken_from = events[299].diff.event_time
    resynced_at = events[400].diff.event_time
    assert (broken_from, resynced_at) == stats.invalid_intervals[1][:2]
    assert "continuity break" in stats.invalid_intervals[1][2]
    assert not [t for t in tops if broken_from < t.time < resynced_at], "a stale book was served in the gap"
    assert [t for t in tops if t.time > resynced_at], "nothing after the re-sync"
    assert stats.invalid_ms == (events[10].diff.event_time - start) + (resynced_at - broken_from)


def test_resync_replaces_the_book_so_it_cannot_come_back_inverted() -> None:
    # Book at u=10: bid 100, ask 101. Lost events (u 11..20) move the market up and remove ask 101.
    snap1 = Snapshot(10, 1_000, ((D("100"), D("1")),), ((D("101"), D("1")),))
    d11 = Diff(11, 11, 10, 1_500, ((D("99"), D("2")),), ())
    # u 12..20 lost; the next stored event has pu 20: a break.
    d21 = Diff(21, 21, 20, 30_000, ((D("104"), D("1")),), ())
    d22 = Diff(22, 22, 21, 45_000, (), ((D("106"), D("3")),))
    d23 = Diff(23, 23, 22, 61_000, (), ())
    snap2 = Snapshot(21, 31_000, ((D("105"), D("2")), (D("104"), D("1"))), ((D("106"), D("1")), (D("107"), D("1"))))
    tops, stats = reconstruct([snap1, snap2], [d11, d21, d22, d23], 0, 70_000)
    assert stats.breaks == 1 and stats.resyncs == 1 and stats.crossed == 0
    after = [t for t in tops if t.time >= 45_000]
    assert [t.time for t in after] == [50_000, 60_000]
    for t in after:
        assert t.bids == ((D("105"), D("2")), (D("104"), D("1")))
        assert t.asks == ((D("106"), D("3")), (D("107"), D("1")))  # no stale 101 ask
        assert t.bids[0][0] < t.asks[0][0]
    # What a merge of the new snapshot into the old book would have produced: inverted.
    merged = OrderBook.from_snapshot(snap1)
    merged.apply(d11)
    merged.apply(Diff(21, 21, 20, 0, snap2.bids, snap2.asks))
    assert merged.crossed


def test_a_crossed_book_is_treated_as_a_break_and_resynced() -> None:
    snap1 = Snapshot(5, 0, ((D("100"), D("1")),), ((D("101"), D("1")),))
    bad = Diff(6, 6, 5, 12_000, ((D("102"), D("1")),), ())  # bid above the ask: corrupt data
    d7 = Diff(7, 7, 6, 25_000, (), ((D("103"), D("1")),))
    d8 = Diff(8, 8, 7, 44_000, (), ())
    snap2 = Snapshot(7, 26_000, ((D("100"), D("1")),), ((D("103"), D("1")),))
    tops, stats = reconstruct([snap1, snap2], [Diff(5, 5, 4, 1_000), bad, d7, d8], 0, 50_000)
    assert stats.crossed == 1 and stats.resyncs == 1
    assert [t.time for t in tops] == [10_000, 30_000, 40_000]
    assert all(t.bids[0][0] < t.asks[0][0] for t in tops)
    assert stats.invalid_intervals[-1][0] == 12_000 and stats.invalid_intervals[-1][1] == 25_000


def test_snapshot_older_than_the_stored_diffs_is_unusable_and_the_next_one_is_used() -> None:
    m = BookMarket(seed=3)
    events = m.run(300)
    stored = [e.diff for e in events[50:]]  # the store starts at event 50
    snaps = [m.snapshot_after(20), m.snapshot_after(120)]  # the first is older than the stored diffs
    tops, stats = reconstruct(snaps, stored, events[50].diff.event_time, events[-1].diff.event_time)
    assert stats.snapshots_unusable == 1 and stats.snapshots_used == 1 and stats.breaks == 0
    assert stats.dropped_before_sync == 70
    _check_against_truth(m, tops)


def test_no_snapshot_means_no_book_and_the_whole_window_is_invalid() -> None:
    m = BookMarket(seed=4)
    events = m.run(100)
    tops, stats = reconstruct([], [e.diff for e in events], 0, 10**13)
    assert tops == [] and stats.dropped_before_sync == 100 and stats.invalid_ms == 10**13


def test_the_live_edge_is_not_emitted_until_the_next_event_proves_it() -> None:
    snap = Snapshot(5, 0, ((D("100"), D("1")),), ((D("101"), D("1")),))
    d5 = Diff(5, 5, 4, 1_000)
    d6 = Diff(6, 6, 5, 15_000, ((D("100"), D("0")), (D("99"), D("4"))), ())
    tops, stats = reconstruct([snap], [d5, d6], 0, 40_000)
    assert [t.time for t in tops] == [10_000]  # 20 s and 30 s wait for an event after d6
    assert tops[0].bids == ((D("100"), D("1")),)
    assert stats.unproven_ms == 25_000
    # Quantity 0 removed the level.
    book = OrderBook.from_snapshot(snap)
    book.apply(d6)
    assert book.best_bid == D("99") and D("100") not in book.bids


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        reconstruct([], [], 10, 10)
    with pytest.raises(ValueError):
        reconstruct([], [], 0, 10, cadence_ms=0)
    with pytest.raises(ValueError):
        OrderBook(1, [(D("1"), D("-1"))])


def test_a_snapshot_older_than_the_buffered_diffs_is_passed_with_its_reason_and_the_next_used() -> None:
    m = BookMarket(seed=8)
    events = m.run(300)
    stored = [e.diff for e in events[50:]]  # the buffered diffs start at event 50
    old, good = m.snapshot_after(20), m.snapshot_after(120)
    tops, stats = reconstruct([old, good], stored, events[50].diff.event_time, events[-1].diff.event_time)
    assert stats.snapshots_used == 1 and stats.syncs == 1
    ((last_id, time, why),) = stats.unusable
    assert (last_id, time) == (old.last_update_id, old.time)
    assert why.startswith("older than the stored diffs") and f"< U {events[50].diff.first_id}" in why
    _check_against_truth(m, tops)


def test_a_snapshot_whose_last_update_id_falls_between_two_events_is_passed_with_its_reason() -> None:
    # Futures ids are not consecutive: U of an event may exceed the previous u by more than one.
    d1 = Diff(100, 110, 99, 1_000, ((D("99"), D("1")),), ())
    d2 = Diff(115, 120, 110, 2_000, ((D("98"), D("2")),), ())
    d3 = Diff(121, 125, 120, 21_000, (), ((D("102"), D("1")),))
    d4 = Diff(126, 130, 125, 32_000, (), ())
    between = Snapshot(112, 1_500, ((D("99"), D("1")),), ((D("101"), D("1")),))
    usable = Snapshot(122, 20_000, ((D("99"), D("1")), (D("98"), D("2"))), ((D("101"), D("1")),))
    tops, stats = reconstruct([between, usable], [d1, d2, d3, d4], 0, 40_000)
    ((last_id, _, why),) = stats.unusable
    assert last_id == 112 and "falls between two stored events (u 110 and U 115)" in why
    assert stats.snapshots_used == 1 and stats.syncs == 1 and stats.breaks == 0
    assert [t.time for t in tops] == [30_000] and tops[0].asks[0] == (D("101"), D("1"))


def test_a_replay_stopped_at_any_diff_and_continued_from_its_state_equals_one_replay() -> None:
    m = BookMarket(seed=9)
    events = m.run(900)
    lost = set(range(400, 410))
    stored = [e.diff for i, e in enumerate(events) if i not in lost]
    snaps = [m.snapshot_after(10), m.snapshot_after(300), m.snapshot_after(600)]
    start, end = events[0].diff.event_time, events[-1].diff.event_time
    whole = Replay(start, end)
    expected = whole.run(snaps, stored)
    expected_stats = whole.finish()
    for cut in (0, 5, 350, 395, 420, 605, 880):
        at = stored[cut].event_time
        first = Replay(start, end)
        head = first.run(snaps, [d for d in stored if d.event_time <= at], checkpoint_at=at)
        assert first.checkpoint is not None
        # Only what a continuation is given: diffs after the checkpoint, snapshots not yet passed.
        rest = Replay(start, end, state=first.checkpoint)
        tail = rest.run(snaps, [d for d in stored if d.event_time > at])
        assert head + tail == expected, f"rows differ when cut after {at}"
        assert rest.finish() == expected_stats, f"stats differ when cut after {at}"
