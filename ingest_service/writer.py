"""Turn a fetched batch into per-collection bulk writes; the funding "newest wins" upsert.

``MongoStore.insert_idempotent`` covers every collection but two: ``funding_rates``, whose
document for a funding time is *replaced* by a newer update, and ``klines``, where the
exchange's kline replaces one an extractor wrote first (:func:`write_klines`). Those writes
live here (rather than in ``dm_resources.mongo``) because only the ingest service needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import ReplaceOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from dm_resources.contracts import KLINE_SOURCES_REPLACEABLE
from dm_resources.mongo import WriteResult, duplicates_only
from ingest_service.events import Decoded, dead_letter_doc, newest_funding

# Dead letters go last: a document the store refuses elsewhere in the batch becomes one.
WRITE_ORDER = (
    "agg_trades",
    "klines",
    "depth_updates",
    "book_tickers",
    "tickers",
    "mark_prices",
    "funding_rates",
    "dead_letters",
)


class MessageInfo:
    """What the writer needs of a NATS message (kept free of nats types for tests).

    The stream sequence is only needed for a dead letter's ``_id``, and parsing it from
    the reply subject cost ~10% of the service's CPU when done for every message, so it
    may be given as a function that is called only when asked.
    """

    __slots__ = ("_seq", "data", "subject")

    def __init__(self, data: bytes, subject: str, stream_seq: int | Callable[[], int]) -> None:
        self.data = data
        self.subject = subject
        self._seq = stream_seq

    @property
    def stream_seq(self) -> int:
        if callable(self._seq):
            self._seq = self._seq()
        return self._seq


@dataclass
class BatchPlan:
    """Documents still to write, per collection, and which message each came from.

    Collections are removed from ``pending`` as their write succeeds, so a retry after
    a failure writes only what is left.
    """

    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    owners: dict[str, list[int]] = field(default_factory=dict)
    decoded: list[Decoded] = field(default_factory=list)
    infos: list[MessageInfo] = field(default_factory=list)
    received_at_ms: int = 0

    def add(self, coll: str, doc: dict[str, Any], owner: int) -> None:
        self.pending.setdefault(coll, []).append(doc)
        self.owners.setdefault(coll, []).append(owner)

    def next_collection(self) -> str | None:
        for name in WRITE_ORDER:
            if self.pending.get(name):
                return name
        for name, docs in self.pending.items():
            if docs:
                return name
        return None

    def done(self, coll: str) -> None:
        self.pending.pop(coll, None)
        self.owners.pop(coll, None)

    def dead_letter(self, index: int, reason: str) -> None:
        info = self.infos[index]
        dec = self.decoded[index]
        self.add(
            "dead_letters",
            dead_letter_doc(
                info.stream_seq,
                info.subject,
                info.data,
                reason,
                self.received_at_ms,
                dec.event_type,
                dec.symbol,
            ),
            index,
        )


def plan_batch(infos: Sequence[MessageInfo], decoded: Sequence[Decoded], received_at_ms: int) -> BatchPlan:
    """Group a batch's documents by collection; bad messages become dead letters; funding reduced."""
    plan = BatchPlan(decoded=list(decoded), infos=list(infos), received_at_ms=received_at_ms)
    funding: list[tuple[dict[str, Any], int]] = []
    for i, dec in enumerate(decoded):
        if dec.error is not None:
            plan.dead_letter(i, dec.error)
            continue
        for coll, doc in dec.docs:
            if coll == "funding_rates":
                funding.append((doc, i))
            else:
                plan.add(coll, doc, i)
    if funding:
        owner_of = {id(doc): i for doc, i in funding}
        for doc in newest_funding(d for d, _ in funding):
            plan.add("funding_rates", doc, owner_of[id(doc)])
    return plan


def write_newest_wins(coll: Collection, docs: Sequence[Mapping[str, Any]]) -> WriteResult:
    """Upsert each document unless the stored one has an equal or newer ``event_time``.

    The filter ``{_id, event_time < new}`` matches only an older document; when it does
    not match, the upsert tries to insert the ``_id`` and gets a duplicate-key error,
    which here means "an equal or newer update is already stored" and is counted as a
    duplicate. Idempotent and independent of delivery order.
    """
    if not docs:
        return WriteResult()
    ops = [
        UpdateOne(
            {"_id": d["_id"], "event_time": {"$lt": d["event_time"]}},
            {"$set": {k: v for k, v in d.items() if k != "_id"}},
            upsert=True,
        )
        for d in docs
    ]
    try:
        res = coll.bulk_write(ops, ordered=False)
        return WriteResult(upserted=res.upserted_count, modified=res.modified_count)
    except BulkWriteError as exc:
        details = exc.details
        dups = duplicates_only(coll.name, exc)
        return WriteResult(upserted=details.get("nUpserted", 0), modified=details.get("nModified", 0), duplicates=dups)


def write_klines(coll: Collection, docs: Sequence[Mapping[str, Any]]) -> WriteResult:
    """Insert the exchange's klines; one replaces a stored kline only where an extractor wrote that minute.

    Each document is a ``ReplaceOne`` filtered on ``{_id, source in KLINE_SOURCES_REPLACEABLE}``
    with upsert: an extractor's kline matches and is replaced whole (its extra fields go with
    it); a missing minute does not match and is inserted; a minute the exchange already gave
    (websocket or REST, or this same kline redelivered) does not match, the upsert's insert
    hits the unique ``_id`` and is counted as a duplicate. Idempotent, order-independent.
    """
    if not docs:
        return WriteResult()
    ops = [
        ReplaceOne({"_id": d["_id"], "source": {"$in": list(KLINE_SOURCES_REPLACEABLE)}}, d, upsert=True) for d in docs
    ]
    try:
        res = coll.bulk_write(ops, ordered=False)
        return WriteResult(upserted=res.upserted_count, modified=res.modified_count)
    except BulkWriteError as exc:
        details = exc.details
        dups = duplicates_only(coll.name, exc)
        return WriteResult(upserted=details.get("nUpserted", 0), modified=details.get("nModified", 0), duplicates=dups)


def stored_count(res: WriteResult) -> int:
    return res.inserted + res.upserted + res.modified
