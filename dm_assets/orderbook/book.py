"""Order-book reconstruction from a REST snapshot plus stored ``depthUpdate`` diffs.

Binance's procedure for USD-M futures ("How to manage a local order book correctly"):

1. take a snapshot ``GET /fapi/v1/depth`` (it carries ``lastUpdateId`` = L);
2. drop every buffered event with ``u < L``;
3. the first event applied must satisfy ``U <= L <= u`` (also accepted here: ``pu == L``, an
   event that continues exactly from the snapshot's id, which the ``pu`` chain proves);
4. from then on every event's ``pu`` must equal the previous event's ``u``; otherwise the
   book is invalid and the process restarts from step 1 with a *new* snapshot;
5. quantities are absolute: a quantity sets the level, ``0`` removes it.

Why it looks like this (the bugs other libraries report, each avoided and tested):

* **Inverted books after a re-sync** come from merging the new snapshot into the stale
  book: a level that vanished during the lost interval survives and can sit on the wrong
  side of the new best price. A re-sync here *replaces* the book with the snapshot. A book
  that is still crossed (best bid >= best ask) is treated like a continuity break.
* **Lost intervals**: between a break and the next usable snapshot there is no valid book.
  That time is counted (``invalid_ms``), listed (``invalid_intervals``) and nothing is
  emitted for it; a stale book is never served as current.
* **Proven snapshots only**: the book at grid time ``g`` is emitted only when the event
  that follows ``g`` continues the chain (its ``pu`` equals the last applied ``u``). A
  break discovered later can therefore never invalidate something already emitted. The
  cost: the newest grid points wait for the next event.
* **Unusable snapshots**: a snapshot older than the stored diffs (the first stored event
  after it has ``U > L``: the events in between are not in the store), or one whose ``L``
  falls between two stored events (no event has ``U <= L <= u``), cannot start a book: the
  next one is tried, and each is listed with its reason (``BookStats.unusable``).
* **A snapshot awaiting its diffs** (taken at the live edge, no stored diff reaches its ``L``
  yet) ends the invalid span at its own time: from there the book is unproven, not broken;
  the next run proves it.
* **Resumable**: :class:`Replay` carries its whole state from one diff to the next
  (:class:`ReplayState`); a run may stop at a diff, store that state as a checkpoint, and a
  later run continue from it over the later diffs with exactly the result a replay from the
  day's first snapshot gives.

Prices and quantities are :class:`decimal.Decimal` (from Decimal128 or strings): the book
is exchange data, not a computation, so no digit is lost. Sides are ``SortedDict``s, so
best prices and the top N are O(log n) / O(N) per read rather than a sort per grid point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from sortedcontainers import SortedDict

Level = tuple[Decimal, Decimal]

DEFAULT_DEPTH = 20
DEFAULT_CADENCE_MS = 10_000


def to_decimal(value: Any) -> Decimal:
    """Decimal128, str, int or Decimal → Decimal (floats are refused: they may have lost digits)."""
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str | int) and not isinstance(value, bool):
        return Decimal(value)
    raise TypeError(f"price/quantity must be Decimal128, Decimal, str or int, got {type(value).__name__}")


def levels_of(raw: Iterable[Sequence[Any]] | None) -> tuple[Level, ...]:
    return tuple((to_decimal(p), to_decimal(q)) for p, q in (raw or ()))


@dataclass(frozen=True, slots=True)
class Diff:
    """One ``depthUpdate``: ``U`` first id, ``u`` final id, ``pu`` previous event's final id."""

    first_id: int
    final_id: int
    prev_final_id: int
    event_time: int
    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Diff:
        """A ``depth_updates`` document (docs/DATA_MODEL.md)."""
        return cls(
            int(doc["first_update_id"]),
            int(doc["final_update_id"]),
            int(doc["prev_final_update_id"]),
            int(doc["event_time"]),
            levels_of(doc.get("bids")),
            levels_of(doc.get("asks")),
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A REST depth snapshot: the full book as of update id ``last_update_id``, taken at ``time``."""

    last_update_id: int
    time: int
    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Snapshot:
        """A ``depth_snapshots`` document (docs/DATA_MODEL.md)."""
        return cls(
            int(doc["last_update_id"]),
            int(doc["snapshot_time"]),
            levels_of(doc.get("bids")),
            levels_of(doc.get("asks")),
        )


class OrderBook:
    """One symbol's book: price → quantity per side, and the update id it is valid at."""

    __slots__ = ("asks", "bids", "last_update_id")

    def __init__(self, last_update_id: int, bids: Iterable[Level] = (), asks: Iterable[Level] = ()) -> None:
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()
        self.last_update_id = last_update_id
        self._set(self.bids, bids)
        self._set(self.asks, asks)

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> OrderBook:
        """A *fresh* book holding only the snapshot's levels (never merged into an old book)."""
        return cls(snap.last_update_id, snap.bids, snap.asks)

    def copy(self) -> OrderBook:
        out = OrderBook(self.last_update_id)
        out.bids, out.asks = self.bids.copy(), self.asks.copy()
        return out

    def levels(self) -> tuple[list[Level], list[Level]]:
        """Every level: bids highest first, asks lowest first."""
        return self.top(max(len(self.bids), len(self.asks)))

    @staticmethod
    def _set(side: SortedDict, levels: Iterable[Level]) -> None:
        for price, qty in levels:
            if qty == 0:
                side.pop(price, None)  # absolute quantity 0: the level is gone
            elif qty < 0:
                raise ValueError(f"negative quantity {qty} at price {price}")
            else:
                side[price] = qty

    def apply(self, diff: Diff) -> None:
        self._set(self.bids, diff.bids)
        self._set(self.asks, diff.asks)
        self.last_update_id = diff.final_id

    @property
    def best_bid(self) -> Decimal | None:
        return self.bids.peekitem(-1)[0] if self.bids else None

    @property
    def best_ask(self) -> Decimal | None:
        return self.asks.peekitem(0)[0] if self.asks else None

    @property
    def crossed(self) -> bool:
        """Best bid at or above best ask: impossible on a live exchange, so the book is wrong."""
        b, a = self.best_bid, self.best_ask
        return b is not None and a is not None and b >= a

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Best ``n`` bids (highest first) and asks (lowest first)."""
        nb = len(self.bids)
        bids = [(p, self.bids[p]) for p in reversed(self.bids.keys()[max(0, nb - n) :])]
        asks = [(p, self.asks[p]) for p in self.asks.keys()[:n]]
        return bids, asks


@dataclass(frozen=True, slots=True)
class TopOfBook:
    """The top ``depth`` levels at grid time ``time`` (state after every event with E <= time)."""

    time: int
    last_update_id: int
    last_event_time: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass
class BookStats:
    """What happened while rebuilding; every counter is about the window or its warm-up.

    ``invalid_ms`` is the time inside the window with no valid book (before the first sync,
    and from each break to the re-sync); ``invalid_intervals`` lists those spans with the
    reason. ``unproven_ms`` is the live edge: after the last event whose successor has not
    arrived yet, or after a snapshot that no stored diff reaches yet (not an error; the next
    run proves it). ``unusable`` lists each snapshot that could not start a book, and why.
    """

    events: int = 0
    applied: int = 0
    dropped_before_sync: int = 0  # u < L of the snapshot, or no usable snapshot yet
    stale_ignored: int = 0  # an event at or before the book's update id (already covered)
    syncs: int = 0  # first sync + re-syncs
    resyncs: int = 0
    breaks: int = 0  # pu != previous u
    crossed: int = 0  # book crossed after an update: treated as a break
    snapshots_used: int = 0
    snapshots_unusable: int = 0
    emitted: int = 0
    invalid_ms: int = 0
    unproven_ms: int = 0
    valid_ms: int = 0
    invalid_intervals: list[tuple[int, int, str]] = field(default_factory=list)
    unusable: list[tuple[int, int, str]] = field(default_factory=list)  # (lastUpdateId, time, why)
    pending_snapshot: tuple[int, int] | None = None  # (lastUpdateId, time) awaiting its diffs at the end

    def copy(self) -> BookStats:
        return replace(self, invalid_intervals=list(self.invalid_intervals), unusable=list(self.unusable))

    def to_dict(self) -> dict[str, Any]:
        lists = ("invalid_intervals", "unusable", "pending_snapshot")
        out = {k: v for k, v in self.__dict__.items() if k not in lists}
        out["invalid_intervals"] = [{"start": a, "end": b, "reason": r} for a, b, r in self.invalid_intervals]
        out["unusable_snapshots"] = [{"last_update_id": u, "time": t, "reason": r} for u, t, r in self.unusable]
        if self.pending_snapshot is not None:
            out["pending_snapshot"] = {"last_update_id": self.pending_snapshot[0], "time": self.pending_snapshot[1]}
        return out


def _grid_from(t: int, cadence: int) -> int:
    """First grid time >= t."""
    return -(-t // cadence) * cadence


NO_SYNC_YET = "no snapshot synced yet"


@dataclass
class ReplayState:
    """Everything a replay carries from one diff to the next; stored, it is a checkpoint.

    ``position`` is the ``(event_time, u)`` of the last diff consumed: a continuation reads
    the diffs after it in the store's ``(event_time, u)`` order. Snapshots at or before
    ``snap_after`` (``(lastUpdateId, time)``) were used or passed, and those with a
    ``lastUpdateId`` below ``prev_u`` can never start a book again (every later event has
    ``U > prev_u``): a continuation considers only the others. ``window_start`` moves to the
    first sync when the replay ``begins_at_first_sync`` (a symbol's first day: there is no
    book to judge before its first snapshot).
    """

    window_start: int
    begun: bool
    book: OrderBook | None
    prev_u: int
    last_e: int
    invalid_since: int | None
    invalid_reason: str
    next_grid: int
    position: tuple[int, int] | None
    snap_after: tuple[int, int] | None
    stats: BookStats

    def copy(self) -> ReplayState:
        return replace(self, book=self.book.copy() if self.book is not None else None, stats=self.stats.copy())


def _snap_key(s: Snapshot) -> tuple[int, int]:
    return (s.last_update_id, s.time)


class Replay:
    """Binance's procedure over stored snapshots and diffs, emitting the proven top-``depth`` book every ``cadence_ms``.

    ``run`` may be called once; ``finish`` closes the accounting at ``end_ms`` (what is still
    invalid, or unproven, at the end of the window). ``checkpoint_at`` makes ``run`` keep a
    copy of the state after the last diff with ``event_time <= checkpoint_at``.
    """

    def __init__(
        self,
        start_ms: int,
        end_ms: int,
        *,
        cadence_ms: int = DEFAULT_CADENCE_MS,
        depth: int = DEFAULT_DEPTH,
        load: Callable[[Snapshot], Snapshot] | None = None,
        begins_at_first_sync: bool = False,
        state: ReplayState | None = None,
    ) -> None:
        if cadence_ms <= 0 or depth <= 0:
            raise ValueError("cadence_ms and depth must be positive")
        if end_ms <= start_ms:
            raise ValueError("end_ms must be after start_ms")
        self.end_ms, self.cadence_ms, self.depth, self.load = end_ms, cadence_ms, depth, load
        self.s = (
            state.copy()
            if state is not None
            else ReplayState(
                window_start=start_ms,
                begun=not begins_at_first_sync,
                book=None,
                prev_u=-1,
                last_e=start_ms,
                invalid_since=start_ms,
                invalid_reason=NO_SYNC_YET,
                next_grid=_grid_from(start_ms, cadence_ms),
                position=None,
                snap_after=None,
                stats=BookStats(),
            )
        )
        self.out: list[TopOfBook] = []
        self.checkpoint: ReplayState | None = None
        self._snaps: list[Snapshot] = []
        self._si = 0

    @property
    def stats(self) -> BookStats:
        return self.s.stats

    def state(self) -> ReplayState:
        """A copy of the state now, with the snapshots passed so far folded into ``snap_after``."""
        st = self.s.copy()
        if self._si > 0:
            st.snap_after = _snap_key(self._snaps[self._si - 1])
        return st

    # -- driving -----------------------------------------------------------------------------
    def run(
        self, snapshots: Iterable[Snapshot], diffs: Iterable[Diff], *, checkpoint_at: int | None = None
    ) -> list[TopOfBook]:
        """Consume ``diffs`` (ascending ``(event_time, u)``, once: a cursor works) against ``snapshots``."""
        after, floor = self.s.snap_after, self.s.prev_u
        self._snaps = sorted(
            (s for s in snapshots if (after is None or _snap_key(s) > after) and s.last_update_id >= floor),
            key=_snap_key,
        )
        self._si = 0
        for d in diffs:
            if checkpoint_at is not None and self.checkpoint is None and d.event_time > checkpoint_at:
                self.checkpoint = self.state()
            self._consume(d)
        if checkpoint_at is not None and self.checkpoint is None:
            self.checkpoint = self.state()
        return self.out

    def finish(self) -> BookStats:
        """Close the window: what is invalid or unproven at ``end_ms``. Call once, after ``run``."""
        s, st = self.s, self.s.stats
        if not s.begun:  # never synced on a first day: judged from its first snapshot on
            first = self._snaps[0].time if self._snaps else s.window_start
            s.window_start = min(max(s.window_start, first), self.end_ms)
            s.invalid_since, s.begun = s.window_start, True
        pending = self._snaps[self._si] if s.book is None and self._si < len(self._snaps) else None
        if s.book is None and pending is not None and pending.time < self.end_ms:
            # Taken at the live edge: no stored diff reaches its lastUpdateId yet. Broken until it, unproven after.
            self._close_invalid(pending.time)
            st.pending_snapshot = _snap_key(pending)
            st.unproven_ms = self.end_ms - max(pending.time, s.window_start)
        elif s.book is None:
            self._close_invalid(self.end_ms)
        elif s.last_e < self.end_ms:
            st.unproven_ms = self.end_ms - max(s.last_e, s.window_start)
        return st

    # -- one diff ----------------------------------------------------------------------------
    def _consume(self, d: Diff) -> None:
        self.stats.events += 1
        while self._step(d):  # a break: the same event may start the re-sync
            pass
        self.s.position = (d.event_time, d.final_id)

    def _step(self, d: Diff) -> bool:
        """Apply ``d``; True when it broke the chain and must be offered again as a sync point."""
        s, st = self.s, self.s.stats
        if s.book is None:
            self._sync(d)
            return False
        if d.final_id <= s.prev_u:
            st.stale_ignored += 1
            return False
        if d.prev_final_id != s.prev_u:
            st.breaks += 1
            self._invalidate(s.last_e, f"continuity break: pu {d.prev_final_id} != previous u {s.prev_u}")
            return True
        self._emit_until(d.event_time, s.book)
        s.book.apply(d)
        st.applied += 1
        if s.book.crossed:
            st.crossed += 1
            self._invalidate(d.event_time, "book crossed after an update")
            s.prev_u = d.final_id
            return False
        s.prev_u, s.last_e = d.final_id, d.event_time
        return False

    def _sync(self, d: Diff) -> None:
        """Start a book at ``d`` from the first snapshot it can continue: ``U <= L <= u`` (or ``pu == L``)."""
        s, st, snaps = self.s, self.s.stats, self._snaps
        while self._si < len(snaps) and d.prev_final_id != snaps[self._si].last_update_id < d.first_id:
            self._pass_unusable(snaps[self._si], d)
            self._si += 1
        if self._si >= len(snaps) or snaps[self._si].last_update_id > d.final_id:
            st.dropped_before_sync += 1  # before the next snapshot (u < L), or no snapshot at all
            return
        head = snaps[self._si]
        self._si += 1
        s.book = OrderBook.from_snapshot(self.load(head) if self.load is not None else head)
        s.book.apply(d)
        st.snapshots_used += 1
        st.syncs += 1
        st.resyncs += 1 if st.syncs > 1 else 0
        st.applied += 1
        if s.book.crossed:
            st.crossed += 1
            self._invalidate(d.event_time, "book crossed right after a sync")
            s.prev_u = d.final_id
            return
        self._close_invalid(d.event_time)
        s.prev_u, s.last_e = d.final_id, d.event_time

    def _pass_unusable(self, snap: Snapshot, d: Diff) -> None:
        """A snapshot ``d`` has moved past. One taken before the book's last id predates it (silent)."""
        s = self.s
        if snap.last_update_id < s.prev_u:
            return
        before = s.position[1] if s.position is not None else None
        if before is not None and before < snap.last_update_id:
            why = (
                f"lastUpdateId {snap.last_update_id} falls between two stored events (u {before} and U "
                f"{d.first_id}): no event has U <= lastUpdateId <= u"
            )
        else:
            why = (
                f"older than the stored diffs: lastUpdateId {snap.last_update_id} < U {d.first_id} of the first "
                "stored diff after it (the diffs in between are not stored)"
            )
        s.stats.snapshots_unusable += 1
        s.stats.unusable.append((snap.last_update_id, snap.time, why))
        if not s.begun:  # the first snapshot of a first day: the book is judged from it, usable or not
            s.window_start = min(max(s.window_start, snap.time), self.end_ms)
            s.begun, s.invalid_since = True, s.window_start

    # -- accounting --------------------------------------------------------------------------
    def _invalidate(self, at: int, reason: str) -> None:
        self.s.book, self.s.invalid_since, self.s.invalid_reason = None, at, reason

    def _close_invalid(self, until: int) -> None:
        s = self.s
        if s.invalid_since is None:
            return
        if not s.begun:  # the symbol's first sync: its book history starts here
            s.window_start = min(max(s.window_start, until), self.end_ms)
            s.begun, s.invalid_since = True, None
            return
        a, b = max(s.invalid_since, s.window_start), min(until, self.end_ms)
        if b > a:
            s.stats.invalid_intervals.append((a, b, s.invalid_reason))
            s.stats.invalid_ms += b - a
        s.invalid_since = None

    def _emit_until(self, t: int, book: OrderBook) -> None:
        """Emit grid points in [last_e, t): the event at ``t`` has just proven the book held until then."""
        s = self.s
        if s.next_grid < s.last_e:
            s.next_grid = _grid_from(s.last_e, self.cadence_ms)
        while s.next_grid < t and s.next_grid < self.end_ms:
            if s.next_grid >= s.window_start:
                bids, asks = book.top(self.depth)
                self.out.append(TopOfBook(s.next_grid, book.last_update_id, s.last_e, tuple(bids), tuple(asks)))
                s.stats.emitted += 1
            s.next_grid += self.cadence_ms
        a, b = max(s.last_e, s.window_start), min(t, self.end_ms)
        if b > a:
            s.stats.valid_ms += b - a


def reconstruct(
    snapshots: Iterable[Snapshot],
    diffs: Iterable[Diff],
    start_ms: int,
    end_ms: int,
    *,
    cadence_ms: int = DEFAULT_CADENCE_MS,
    depth: int = DEFAULT_DEPTH,
    load: Callable[[Snapshot], Snapshot] | None = None,
) -> tuple[list[TopOfBook], BookStats]:
    """Replay ``diffs`` on ``snapshots`` and return the proven top-``depth`` book every ``cadence_ms`` in the window.

    ``diffs`` may start before ``start_ms`` (warm-up from a snapshot taken before the window)
    and run past ``end_ms`` (so the window's last grid points can be proven). Snapshots are
    used in ``last_update_id`` order, each at most once, only when the book needs (re)syncing;
    ``load`` turns a level-less snapshot header into the full snapshot when it is used, so a
    caller need not hold a day of 1000-level snapshots in memory. ``diffs`` must come in
    ascending ``u`` (the store's ``(symbol, event_time, final_update_id)`` order is); it is
    consumed once, so a cursor works.
    """
    replay = Replay(start_ms, end_ms, cadence_ms=cadence_ms, depth=depth, load=load)
    tops = replay.run(snapshots, diffs)
    return tops, replay.finish()
