"""Store reads for the API: pages, latest rows, "anything newer?" probes and NDJSON streams.

Every read walks a collection's compound index ``(symbol, [middle fields], time[, tie])``
in ascending order: SecantusDB (the embedded store) scans for descending sorts, so
"latest N" gallops back with ascending windows instead (as ``MongoStore.latest`` does),
starting from where the previous read found the newest row.

Two SecantusDB behaviours shape every query here (measured on a year of 1m candles):

* ``limit`` does not stop its index scan early: ``find({symbol, interval}).limit(3)`` took
  12 s, as long as reading the whole range. So every read is **bounded in time** on both
  sides; open-ended reads gallop over bounded windows instead.
* It plans a SORT stage after an IXSCAN that already yields index order (a year: 21-26 s
  with the sort, 18-19 s without; and a sort is capped at 100 MB). ``hint`` is worse: it
  turns a 1,000-row range read into a full index scan (13 s instead of 0.03 s). So on
  SecantusDB the reads neither sort nor hint: the planner's only candidate for a
  ``symbol``/middle-field/time filter is the compound index, whose forward IXSCAN returns
  index order (checked over 525,600 rows). On MongoDB they ``sort``, which MongoDB serves
  from the same index without a SORT stage.

Filters are built here from already-validated values only (``api.params``): symbols are
``[A-Z0-9]`` strings, times and ids ints, middle fields come from code, never from a client.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import bson
import orjson
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from pymongo import ASCENDING

from dm_resources.contracts import FLOOR_MS, FUTURE_SLACK_MS, now_ms
from dm_resources.mongo import COLLECTIONS, MongoStore

# NDJSON streams decode whole raw batches with bson.decode_all (~2x faster than pymongo's
# per-document decoding for wide documents) into plain dicts that orjson renders. Stored times
# are int64 epoch ms, so the codec's datetime handling matters only for stray BSON dates.
RAW_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)
STREAM_BATCH = 10_000
_EXPLICIT_SORT: dict[int, bool] = {}
_sort_lock = threading.Lock()


def explicit_sort(store: MongoStore) -> bool:
    """False on SecantusDB (its index scan is already ordered), True on MongoDB (sort, served by the index)."""
    key = id(store.client)
    with _sort_lock:
        known = _EXPLICIT_SORT.get(key)
    if known is None:
        known = "secantusVersion" not in store.client.server_info()
        with _sort_lock:
            _EXPLICIT_SORT[key] = known
    return known


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal128):
        return str(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """orjson with Decimal128 rendered as its full decimal string."""
    return orjson.dumps(obj, default=_default)


def projection_for(fields: Mapping[str, Any] | list[str]) -> dict[str, int]:
    proj = {f: 1 for f in fields}
    proj["_id"] = 0
    return proj


@dataclass(frozen=True)
class Source:
    """A collection read for one symbol: the index's middle fields fixed, the rows' projection."""

    name: str
    symbol: str
    extra: tuple[tuple[str, Any], ...]
    projection: tuple[str, ...]

    @property
    def spec(self) -> Any:
        return COLLECTIONS[self.name]

    @property
    def time_field(self) -> str:
        return str(self.spec.time_field)

    @property
    def tie_field(self) -> str | None:
        """The index field after time, when time alone does not order rows uniquely."""
        key = self.spec.key
        idx = key.index(self.time_field)
        return key[idx + 1] if idx + 1 < len(key) else None

    def filter(self, time_cond: Any = None) -> dict[str, Any]:
        flt: dict[str, Any] = {"symbol": self.symbol, **dict(self.extra)}
        if time_cond is not None:
            flt[self.time_field] = time_cond
        return flt

    @property
    def sort(self) -> list[tuple[str, int]]:
        return [(k, ASCENDING) for k in self.spec.key]

    def find(
        self,
        store: MongoStore,
        flt: Mapping[str, Any],
        proj: Mapping[str, Any],
        *,
        batch_size: int = 0,
        limit: int = 0,
        raw: bool = False,
    ) -> Any:
        """A cursor in index order (see the module docstring for how, per server)."""
        coll = store.collection(self.name)
        finder = coll.find_raw_batches if raw else coll.find
        cur = finder(dict(flt), dict(proj), batch_size=batch_size, limit=limit)
        return cur.sort(self.sort) if explicit_sort(store) else cur

    @property
    def proj(self) -> dict[str, int]:
        return projection_for(list(self.projection))


def time_window(start: int | None, end: int | None) -> dict[str, int] | None:
    w: dict[str, int] = {}
    if start is not None:
        w["$gte"] = int(start)
    if end is not None:
        w["$lt"] = int(end)
    return w or None


def read_page(
    store: MongoStore, src: Source, start: int, end: int | None, limit: int, after: int | None = None, *, step_ms: int
) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` rows from ``start`` (skipping tie keys ``<= after`` at ``start``); and whether more exist.

    Without ``end`` the read gallops forward over bounded windows sized for ``limit`` rows
    of ``step_ms`` each (×4 while short), stopping a day past the wall clock.
    """
    proj = src.proj
    rows: list[dict[str, Any]] = []
    lo = start
    tie = src.tie_field
    if after is not None and tie is not None:
        proj_t = {**proj, tie: 1, src.time_field: 1}
        flt = {**src.filter(int(start)), tie: {"$gt": int(after)}}
        rows = list(src.find(store, flt, proj_t, limit=limit + 1))
        lo = start + 1
    stop = end if end is not None else max(lo, now_ms()) + FUTURE_SLACK_MS
    window = max(1, (limit + 1) * step_ms)
    while len(rows) <= limit and lo < stop:
        hi = min(stop, lo + window)
        want = limit + 1 - len(rows)
        rows.extend(src.find(store, src.filter(time_window(lo, hi)), proj, batch_size=min(want, 10_000), limit=want))
        lo, window = hi, window * 4
    more = len(rows) > limit
    return rows[:limit], more


class LatestHints:
    """Where each source's newest row was last seen, so a "latest N" read starts near it."""

    def __init__(self) -> None:
        self._hint: dict[Source, int] = {}
        self._lock = threading.Lock()

    def get(self, src: Source) -> int | None:
        with self._lock:
            return self._hint.get(src)

    def set(self, src: Source, newest: int) -> None:
        with self._lock:
            self._hint[src] = newest
            if len(self._hint) > 10_000:
                self._hint.clear()


def read_latest(
    store: MongoStore, src: Source, n: int, *, end: int | None, step_ms: int, hints: LatestHints
) -> list[dict[str, Any]]:
    """The newest ``n`` rows before ``end`` (or overall), oldest first, by bounded ascending windows only.

    The first window is sized to hold ``n`` rows of ``step_ms`` each, ending at the newest
    row the previous call saw (or at ``end``/now); it grows ×4 until it holds ``n`` rows or
    reaches :data:`FLOOR_MS`. When the data is current that is one index range read. Without
    ``end`` the newest window is open above, which only ever holds the rows landed since.
    """
    proj = {**src.proj, src.time_field: 1}
    hint = hints.get(src) if end is None else None
    anchor = (hint + 1) if hint is not None else (end if end is not None else now_ms() + 1)
    window = max(1, n * step_ms)
    while True:
        lo = max(FLOOR_MS, anchor - window)
        rows = list(src.find(store, src.filter(time_window(lo, end)), proj, batch_size=max(n + 1, 101)))
        if len(rows) >= n or lo <= FLOOR_MS:
            rows = rows[-n:]
            if rows and end is None:
                hints.set(src, int(rows[-1][src.time_field]))
            return rows
        window *= 4


def has_newer(store: MongoStore, src: Source, newest: int | None) -> bool:
    """Whether a row later than ``newest`` exists (one index seek); with no rows cached, any row counts."""
    # Open above, but only ever over the rows landed since ``newest`` (or, with nothing cached,
    # over whatever exists: then one row is all it takes).
    cond = {"$gt": int(newest)} if newest is not None else {"$gte": FLOOR_MS}
    doc = next(iter(src.find(store, src.filter(cond), {"_id": 1}, limit=1)), None)
    return doc is not None


def iter_ndjson(
    store: MongoStore,
    src: Source,
    start: int | None,
    end: int | None,
    *,
    batch_size: int = STREAM_BATCH,
    limit: int = 0,
) -> Iterator[bytes]:
    """NDJSON chunks (one per server batch) of every row in ``[start, end)``, ascending.

    Raw BSON batches decoded by ``bson.decode_all`` (C) and rendered by orjson: the
    slow part left is the store itself.
    """
    lo = start if start is not None else FLOOR_MS
    hi = end if end is not None else now_ms() + FUTURE_SLACK_MS
    cursor = src.find(store, src.filter(time_window(lo, hi)), src.proj, batch_size=batch_size, limit=limit, raw=True)
    nl = b"\n"
    try:
        for batch in cursor:
            docs = bson.decode_all(batch, RAW_CODEC)
            if docs:
                yield nl.join([dumps(d) for d in docs]) + nl
    finally:
        cursor.close()
