"""Funding history from ``GET /fapi/v1/fundingRate`` into ``funding_rates``, per date × symbol partition.

Why it looks like this:

* Live funding comes from ``markPriceUpdate`` (the ingest service proposes the last ``r`` seen
  before each settlement). History before the ingest started, or across its outages, only
  exists on REST. The settled rate from REST is the truth: a REST document replaces a live
  one for the same settlement, never the other way round (its ``event_time`` is the
  settlement time, after every live update about it; see ``FundingRate.to_document``).
* A run may carry several days of one symbol (backfill policy): consecutive days become one
  time range, so 30 days of an 8h symbol cost one request, not 30. Requests pace themselves
  against Binance's separate 500 requests / 5 min budget for this endpoint.
* Idempotent: the range's stored documents are read once and only new or changed ones are
  written, so a re-run writes nothing. A settlement stored live at a slightly different
  millisecond (within ``MATCH_MS``) is updated in place rather than duplicated.
* Intervals are never assumed: they are read from the settlement times
  (:func:`dm_assets.analytics.funding.interval_segments`) and reported per partition.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dm_assets.analytics.funding import interval_segments
from dm_assets.partitions import day_bounds_ms
from dm_resources.contracts import now_ms

if TYPE_CHECKING:
    from dm_resources.binance import BinanceClient
    from dm_resources.mongo import MongoStore

MATCH_MS = 60_000


def day_ranges(days: Iterable[str]) -> list[tuple[int, int]]:
    """Consecutive UTC days merged into ``[start, end)`` ranges, ascending."""
    bounds = sorted(day_bounds_ms(d) for d in set(days))
    out: list[tuple[int, int]] = []
    for a, b in bounds:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


@dataclass
class FundingFill:
    symbol: str
    ranges: list[tuple[int, int]] = field(default_factory=list)
    fetched: int = 0
    inserted: int = 0
    replaced: int = 0
    unchanged: int = 0
    requests: int = 0
    intervals: list[dict[str, float | int]] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        return dict(self.__dict__)


def merge_plan(
    rest_docs: Iterable[Mapping[str, Any]], stored: Iterable[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(to insert, to replace, unchanged): REST documents matched to stored ones within ``MATCH_MS``."""
    by_time = sorted(((int(d["funding_time"]), d) for d in stored), key=lambda x: x[0])
    times = [t for t, _ in by_time]
    inserts: list[dict[str, Any]] = []
    replaces: list[dict[str, Any]] = []
    same = 0
    for doc in rest_docs:
        t = int(doc["funding_time"])
        i = bisect.bisect_left(times, t - MATCH_MS)
        match = by_time[i][1] if i < len(times) and times[i] <= t + MATCH_MS else None
        if match is None:
            inserts.append(dict(doc))
            continue
        new = {**doc, "_id": match["_id"]}
        if dict(match) == new:
            same += 1
        else:
            replaces.append(new)
    return inserts, replaces, same


def fill_funding(
    store: MongoStore, client: BinanceClient, symbol: str, days: Iterable[str], *, now: int | None = None
) -> FundingFill:
    """Fetch the settled funding of ``days`` (UTC) for ``symbol`` and make ``funding_rates`` hold it."""
    now = now_ms() if now is None else now
    out = FundingFill(symbol)
    before = client.funding_stats.requests
    all_times: list[int] = []
    for start, end in day_ranges(days):
        end = min(end, now)
        if end <= start:
            continue
        out.ranges.append((start, end))
        rows = client.fetch_funding_rates(symbol, start, end)
        docs = [r.to_document() for r in rows]
        out.fetched += len(docs)
        stored = store.read_range("funding_rates", symbol, start - MATCH_MS, end + MATCH_MS)
        inserts, replaces, same = merge_plan(docs, stored)
        if inserts:
            res = store.insert_idempotent("funding_rates", inserts)
            out.inserted += res.inserted
            if res.duplicates:  # a live document landed meanwhile under the same _id: REST wins
                store.upsert("funding_rates", inserts)
        if replaces:
            store.upsert("funding_rates", replaces)
        out.replaced += len(replaces)
        out.unchanged += same
        all_times += [d["funding_time"] for d in docs]
    out.requests = client.funding_stats.requests - before
    out.intervals = [{"from": a, "interval_hours": b / 3_600_000} for a, b in interval_segments(sorted(all_times))]
    return out
