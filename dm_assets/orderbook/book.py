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
* **Snapshot too old for the stored diffs**: if the first stored event after a snapshot
  has ``U > L``, the events in between are not in the store: the snapshot is unusable and
  the next one is tried (counted as ``snapshots_unusable``).

Prices and quantities are :class:`decimal.Decimal` (from Decimal128 or strings): the book
is exchange data, not a computation, so no digit is lost. Sides are ``SortedDict``s, so
best prices and the top N are O(log n) / O(N) per read rather than a sort per grid point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    """What happened while rebuilding; every counter is about the window ``[start, end)`` or its warm-up.

    ``invalid_ms`` is the time inside the window with no valid book (before the first sync,
    and from each break to the re-sync); ``invalid_intervals`` lists those spans with the
    reason. ``unproven_ms`` is the live edge: after the last event whose successor has not
    arrived yet (not an error; the next run proves it).
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
    snapshots_unusable: int = 0  # first stored event after it has U > L: diffs missing in between
    emitted: int = 0
    invalid_ms: int = 0
    unproven_ms: int = 0
    valid_ms: int = 0
    invalid_intervals: list[tuple[int, int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "invalid_intervals"}
        out["invalid_intervals"] = [{"start": a, "end": b, "reason": r} for a, b, r in self.invalid_intervals]
        return out


def _grid_from(t: int, cadence: int) -> int:
    """First grid time >= t."""
    return -(-t // cadence) * cadence


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
    if cadence_ms <= 0 or depth <= 0:
        raise ValueError("cadence_ms and depth must be positive")
    if end_ms <= start_ms:
        raise ValueError("end_ms must be after start_ms")
    snaps = sorted(snapshots, key=lambda s: (s.last_update_id, s.time))
    stats = BookStats()
    out: list[TopOfBook] = []
    book: OrderBook | None = None
    si = 0
    prev_u = -1
    last_e = start_ms  # time of the last applied event
    invalid_since: int | None = start_ms  # no book from here (None while the book is valid)
    invalid_reason = "no snapshot synced yet"
    next_grid = _grid_from(start_ms, cadence_ms)

    def close_invalid(until: int) -> None:
        nonlocal invalid_since
        if invalid_since is None:
            return
        a, b = max(invalid_since, start_ms), min(until, end_ms)
        if b > a:
            stats.invalid_intervals.append((a, b, invalid_reason))
            stats.invalid_ms += b - a
        invalid_since = None

    def emit_until(t: int, book: OrderBook) -> None:
        """Emit grid points in [last_e, t): the event at ``t`` has just proven the book held until then."""
        nonlocal next_grid
        if next_grid < last_e:
            next_grid = _grid_from(last_e, cadence_ms)
        while next_grid < t and next_grid < end_ms:
            if next_grid >= start_ms:
                bids, asks = book.top(depth)
                out.append(TopOfBook(next_grid, book.last_update_id, last_e, tuple(bids), tuple(asks)))
            next_grid += cadence_ms
        a, b = max(last_e, start_ms), min(t, end_ms)
        if b > a:
            stats.valid_ms += b - a

    def invalidate(at: int, reason: str) -> None:
        nonlocal book, invalid_since, invalid_reason
        book = None
        invalid_since = at
        invalid_reason = reason

    pending: Iterator[Diff] = iter(diffs)
    redo: Diff | None = None
    while True:
        if redo is not None:
            d, redo = redo, None
        else:
            nxt = next(pending, None)
            if nxt is None:
                break
            d = nxt
            stats.events += 1
        if book is None:
            # Find a snapshot this event can start from: U <= L <= u (or pu == L).
            while si < len(snaps) and d.prev_final_id != snaps[si].last_update_id < d.first_id:
                # Too old: the events between L and U are not stored (or the snapshot predates the break).
                if snaps[si].last_update_id >= prev_u:
                    stats.snapshots_unusable += 1
                si += 1
            if si >= len(snaps) or snaps[si].last_update_id > d.final_id:
                stats.dropped_before_sync += 1  # before the next snapshot (u < L), or no snapshot at all
                continue
            snap = load(snaps[si]) if load is not None else snaps[si]
            si += 1
            book = OrderBook.from_snapshot(snap)
            book.apply(d)
            stats.snapshots_used += 1
            stats.syncs += 1
            stats.resyncs += 1 if stats.syncs > 1 else 0
            stats.applied += 1
            if book.crossed:
                stats.crossed += 1
                invalidate(d.event_time, "book crossed right after a sync")
                prev_u = d.final_id
                continue
            close_invalid(d.event_time)
            prev_u, last_e = d.final_id, d.event_time
            continue
        if d.final_id <= prev_u:
            stats.stale_ignored += 1
            continue
        if d.prev_final_id != prev_u:
            stats.breaks += 1
            invalidate(last_e, f"continuity break: pu {d.prev_final_id} != previous u {prev_u}")
            redo = d  # this event may itself start the re-sync
            continue
        emit_until(d.event_time, book)
        book.apply(d)
        stats.applied += 1
        if book.crossed:
            stats.crossed += 1
            invalidate(d.event_time, "book crossed after an update")
            prev_u = d.final_id
            continue
        prev_u, last_e = d.final_id, d.event_time
    stats.emitted = len(out)
    if book is None:
        close_invalid(end_ms)
    elif last_e < end_ms:
        stats.unproven_ms = end_ms - max(last_e, start_ms)
    return out, stats
