"""Order-book checkpoints: the replay's state at a proven diff, stored so the next run continues from it.

Why MongoDB (``orderbook_checkpoints``) and not the metadata database: a checkpoint *is* an
order book (every level, exact Decimal128, thousands of levels on a busy symbol) plus the
replay's counters, written by the run that writes the book's rows to MongoDB and read back
with the diffs it continues. It is derived data, a cache of the replay: losing it costs one
full replay, never data. The metadata database keeps the small relational facts (audit rows,
health) that people query; a blob per symbol every five minutes does not belong there.

One document per symbol × day (``_id`` ``SYM:YYYY-MM-DD``), replaced by every run of that
partition while the day can still change, and deleted by the run that finds the day final:
nothing later continues it (a re-run of a final day replays it in full), so the collection
holds about one book per symbol, not one per symbol × day of history.

Beside it, ``orderbook_days`` keeps each day's outcome (a small document: the spans without a
valid book with their reasons and status, how far the book is proven, whether the day is
final), which the API reads to explain an instant without a book and the sensor reads to
decide whether a past day can still be healed. Written before the checkpoint: a crash in
between leaves the older checkpoint, from which the next run computes the same outcome again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from bson.decimal128 import Decimal128

from dm_assets.orderbook.book import BookStats, OrderBook, ReplayState, levels_of

if TYPE_CHECKING:
    from dm_resources.mongo import MongoStore

COLLECTION = "orderbook_checkpoints"
DAYS = "orderbook_days"
# Bumped when the stored state's meaning changes: an older checkpoint is then ignored (full replay).
VERSION = 1
_STATS_LISTS = ("invalid_intervals", "unusable")


def checkpoint_id(symbol: str, day: str) -> str:
    return f"{symbol}:{day}"


def _pair(value: Any) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if value is not None else None


def stats_to_document(stats: BookStats) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(stats):
        v = getattr(stats, f.name)
        if f.name in _STATS_LISTS:
            v = [list(x) for x in v]
        elif f.name == "pending_snapshot":
            v = list(v) if v is not None else None
        out[f.name] = v
    return out


def stats_from_document(doc: Mapping[str, Any]) -> BookStats:
    stats = BookStats()
    for f in fields(stats):
        if f.name not in doc:
            continue
        v = doc[f.name]
        if f.name in _STATS_LISTS:
            v = [(int(a), int(b), str(r)) for a, b, r in v]
        elif f.name == "pending_snapshot":
            v = _pair(v)
        setattr(stats, f.name, v)
    return stats


def _book_to_document(book: OrderBook | None) -> dict[str, Any] | None:
    if book is None:
        return None
    bids, asks = book.levels()
    return {
        "last_update_id": book.last_update_id,
        "bids": [[Decimal128(p), Decimal128(q)] for p, q in bids],
        "asks": [[Decimal128(p), Decimal128(q)] for p, q in asks],
    }


def _book_from_document(doc: Mapping[str, Any] | None) -> OrderBook | None:
    if doc is None:
        return None
    return OrderBook(int(doc["last_update_id"]), levels_of(doc.get("bids")), levels_of(doc.get("asks")))


def state_to_document(state: ReplayState) -> dict[str, Any]:
    return {
        "window_start": state.window_start,
        "begun": state.begun,
        "book": _book_to_document(state.book),
        "prev_u": state.prev_u,
        "last_e": state.last_e,
        "invalid_since": state.invalid_since,
        "invalid_reason": state.invalid_reason,
        "next_grid": state.next_grid,
        "position": list(state.position) if state.position is not None else None,
        "snap_after": list(state.snap_after) if state.snap_after is not None else None,
        "stats": stats_to_document(state.stats),
    }


def state_from_document(doc: Mapping[str, Any]) -> ReplayState:
    return ReplayState(
        window_start=int(doc["window_start"]),
        begun=bool(doc["begun"]),
        book=_book_from_document(doc.get("book")),
        prev_u=int(doc["prev_u"]),
        last_e=int(doc["last_e"]),
        invalid_since=int(doc["invalid_since"]) if doc.get("invalid_since") is not None else None,
        invalid_reason=str(doc["invalid_reason"]),
        next_grid=int(doc["next_grid"]),
        position=_pair(doc.get("position")),
        snap_after=_pair(doc.get("snap_after")),
        stats=stats_from_document(doc["stats"]),
    )


@dataclass(frozen=True)
class Checkpoint:
    """A stored checkpoint of one symbol × day, as the run that wrote it left it."""

    symbol: str
    day: str
    cadence_ms: int
    depth: int
    as_of: int
    state: ReplayState

    def fits(self, cadence_ms: int, depth: int) -> str | None:
        """Why this checkpoint cannot continue a run with these settings, or None when it can."""
        if (self.cadence_ms, self.depth) != (cadence_ms, depth):
            have, want = f"{self.cadence_ms} ms / {self.depth}", f"{cadence_ms} ms / {depth}"
            return f"built with cadence / depth {have}, this run asks {want}"
        return None


def load(store: MongoStore, symbol: str, day: str) -> Checkpoint | None:
    """The stored checkpoint of ``symbol`` × ``day``, or None (none yet, or written by an older version)."""
    doc = store.collection(COLLECTION).find_one({"_id": checkpoint_id(symbol, day)})
    if doc is None or doc.get("version") != VERSION or doc.get("state") is None:
        return None
    return Checkpoint(
        symbol=symbol,
        day=day,
        cadence_ms=int(doc["cadence_ms"]),
        depth=int(doc["depth"]),
        as_of=int(doc["as_of"]),
        state=state_from_document(doc["state"]),
    )


def save(
    store: MongoStore,
    symbol: str,
    day: str,
    day_start: int,
    *,
    state: ReplayState,
    cadence_ms: int,
    depth: int,
    as_of: int,
    run_id: str | None = None,
) -> None:
    """Replace the checkpoint of ``symbol`` × ``day``."""
    store.upsert(
        COLLECTION,
        [
            {
                "_id": checkpoint_id(symbol, day),
                "symbol": symbol,
                "day": day,
                "day_start": day_start,
                "version": VERSION,
                "cadence_ms": cadence_ms,
                "depth": depth,
                "as_of": as_of,
                "run_id": run_id,
                "state": state_to_document(state),
            }
        ],
    )


def drop(store: MongoStore, symbol: str, day: str) -> None:
    """Delete the checkpoint of a day that can no longer change."""
    store.collection(COLLECTION).delete_one({"_id": checkpoint_id(symbol, day)})


def save_summary(
    store: MongoStore, symbol: str, day: str, day_start: int, summary: Mapping[str, Any], as_of: int
) -> None:
    """Replace the outcome of ``symbol`` × ``day`` (``orderbook_days``)."""
    store.upsert(
        DAYS,
        [
            {
                "_id": checkpoint_id(symbol, day),
                "symbol": symbol,
                "day": day,
                "day_start": day_start,
                "as_of": as_of,
                "summary": dict(summary),
            }
        ],
    )


def summaries(store: MongoStore, symbol: str, lo_ms: int, hi_ms: int) -> list[dict[str, Any]]:
    """The outcomes of the days starting in ``[lo_ms, hi_ms)``."""
    return store.read_range(DAYS, symbol, lo_ms, hi_ms, projection={"_id": 0})
