"""The services' own MongoDB collections (signals, boot probes, trading configs, …): bounded operations.

Each collection is named after what the services call it. Filters arrive already validated and
translated to MongoDB operators on declared fields (``api/contract/collections.py``), never a
client's raw document. Updates and deletes count their matches first and refuse to touch more
than the caller allowed (:class:`TooManyMatches`), so a loose filter changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from dm_resources.mongo import MongoStore, WriteResult

# Indexes per collection: what the services filter on.
INDEXES: dict[str, tuple[tuple[str, ...], ...]] = {
    "signals": (("strategy_id", "timestamp"), ("symbol", "timestamp"), ("decision_id",)),
    "characterization_artifacts": (("strategy_id",),),
    "tradeengine_boot_probes": (("probe_id",), ("created_at",)),
    "config_rate_limits": (("key",),),
    "heartbeat_state": (("service",),),
    "leverage_status": (("symbol",),),
    "strategy_config_audit": (("strategy_id", "changed_at"),),
}
TRADING_CONFIG_INDEXES: tuple[tuple[str, ...], ...] = (("symbol", "side"),)


class TooManyMatches(ValueError):
    def __init__(self, matched: int, allowed: int) -> None:
        super().__init__(f"the filter matches {matched} documents, more than max_rows={allowed}")
        self.matched = matched
        self.allowed = allowed


@dataclass
class UpdateResult:
    matched: int = 0
    modified: int = 0
    upserted_id: Any = None


class ServiceDocs:
    """Operations on one database's service collections."""

    def __init__(self, store: MongoStore) -> None:
        self.store = store
        self._indexed: set[str] = set()

    def coll(self, name: str) -> Collection:
        coll = self.store.db[name]
        if name not in self._indexed:
            specs = INDEXES.get(name) or (TRADING_CONFIG_INDEXES if name.startswith("trading_configs_") else ())
            for keys in specs:
                coll.create_index([(k, ASCENDING) for k in keys], name="_".join(keys))
            self._indexed.add(name)
        return coll

    def insert(self, name: str, docs: Sequence[Mapping[str, Any]]) -> WriteResult:
        """Insert documents with deterministic ``_id``s; ones already stored are duplicates, not failures."""
        if not docs:
            return WriteResult()
        return self.store._insert_once(self.coll(name), docs)

    def find(
        self,
        name: str,
        flt: Mapping[str, Any],
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 100,
        offset: int = 0,
        projection: Sequence[str] | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        proj = {f: 1 for f in projection} if projection else None
        cur = self.coll(name).find(dict(flt), proj, skip=offset, limit=limit + 1)
        if sort:
            cur = cur.sort([(f, ASCENDING if d > 0 else DESCENDING) for f, d in sort])
        rows = list(cur)
        return rows[:limit], len(rows) > limit

    def count(self, name: str, flt: Mapping[str, Any], cap: int) -> int:
        """How many documents match, counting at most ``cap + 1`` (enough to refuse a larger match)."""
        return len(list(self.coll(name).find(dict(flt), {"_id": 1}, limit=cap + 1)))

    def update(self, name: str, flt: Mapping[str, Any], values: Mapping[str, Any], *, max_rows: int) -> UpdateResult:
        """``$set`` ``values`` on every match, if there are at most ``max_rows`` of them."""
        coll = self.coll(name)
        ids = [d["_id"] for d in coll.find(dict(flt), {"_id": 1}, limit=max_rows + 1)]
        if len(ids) > max_rows:
            raise TooManyMatches(self.count(name, flt, 10_000), max_rows)
        if not ids:
            return UpdateResult()
        res = coll.update_many({"_id": {"$in": ids}}, {"$set": dict(values)})
        return UpdateResult(matched=res.matched_count, modified=res.modified_count)

    def upsert(
        self, name: str, flt: Mapping[str, Any], values: Mapping[str, Any], new_id: Any, *, max_rows: int
    ) -> UpdateResult:
        """Update the matches (at most ``max_rows``), or insert ``flt`` + ``values`` under ``new_id``.

        ``new_id`` is derived from the filter's equalities, so two racing upserts of one key
        insert one document: the loser's insert is a duplicate key, and it then updates.
        """
        res = self.update(name, flt, values, max_rows=max_rows)
        if res.matched:
            return res
        doc = {**{k: v for k, v in flt.items() if not isinstance(v, dict)}, **values, "_id": new_id}
        try:
            self.coll(name).insert_one(doc)
            return UpdateResult(upserted_id=new_id)
        except DuplicateKeyError:
            after = self.coll(name).find_one_and_update(
                {"_id": new_id}, {"$set": dict(values)}, return_document=ReturnDocument.BEFORE
            )
            changed = after is not None and any(after.get(k) != v for k, v in values.items())
            return UpdateResult(matched=1, modified=int(changed))

    def delete(self, name: str, flt: Mapping[str, Any], *, max_rows: int) -> int:
        coll = self.coll(name)
        ids = [d["_id"] for d in coll.find(dict(flt), {"_id": 1}, limit=max_rows + 1)]
        if len(ids) > max_rows:
            raise TooManyMatches(self.count(name, flt, 10_000), max_rows)
        if not ids:
            return 0
        return int(coll.delete_many({"_id": {"$in": ids}}).deleted_count)
