"""What the route modules share: query parameter types, error responses, the pair dependency,
paging links and the one cached-read path. Route modules import this, never each other."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request, Response

from api.deps import AppState, State, known_pair
from api.l2 import L2Cache
from api.models import ErrorResponse
from api.params import DEFAULT_LIMIT, MAX_LIMIT
from api.queries import Source

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "token required (DM_API_PROTECT_READS)"},
    404: {"model": ErrorResponse, "description": "unknown pair"},
    422: {"model": ErrorResponse, "description": "a parameter is malformed; the message names it"},
}
NDJSON = "application/x-ndjson"

Pair = Annotated[str, Query(description="Symbol, e.g. BTCUSDT (case-insensitive)", max_length=64, examples=["BTCUSDT"])]
Start = Annotated[
    str | None,
    Query(
        description="Inclusive; ISO-8601 or epoch milliseconds",
        max_length=64,
        examples=["2026-03-10T00:00:00Z", "1773100800000"],
    ),
]
End = Annotated[
    str | None,
    Query(
        description="Exclusive; ISO-8601 or epoch milliseconds",
        max_length=64,
        examples=["2026-03-11T00:00:00Z", "1773187200000"],
    ),
]
Limit = Annotated[
    int | None,
    Query(
        ge=1,
        le=MAX_LIMIT,
        description=f"rows per page (default {DEFAULT_LIMIT}); "
        "with format=ndjson, a cap on the streamed rows (default: none)",
    ),
]
After = Annotated[
    str | None, Query(description="tie-breaker from a 'next' link (rows at `start` with a larger id)", max_length=24)
]
Format = Annotated[Literal["json", "ndjson"], Query(description="ndjson streams the whole [start, end) range")]


def _known_pair(st: State, pair: Pair) -> str:
    """``pair`` validated (shape first, so no operator reaches a query) and known to the store."""
    return known_pair(pair, st)


#: A route parameter ``pair`` that arrives validated and upper-cased, or the request is a 4xx naming it.
KnownPair = Annotated[str, Depends(_known_pair)]


def json_response(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


def next_link(request: Request, src: Source, rows: list[dict[str, Any]], more: bool) -> str | None:
    """The following page: start at the last time + 1, or at the last time past the last tie key."""
    if not more or not rows:
        return None
    last = rows[-1]
    t = int(last[src.time_field])
    tie = src.tie_field
    if tie is not None and tie in last:
        url = request.url.include_query_params(start=t, after=int(last[tie]))
    else:
        url = request.url.remove_query_params("after").include_query_params(start=t + 1)
    return str(url)


def cached(
    st: AppState,
    key: Hashable,
    tag: str | None,
    fill: Callable[[], tuple[bytes, int | None]],
    probe: Callable[[int | None], bool],
    dataset: str,
) -> Response:
    """The one cached read path: L1 (this process) → L2 (shared, Redis) → store, as the strategy says.

    Entries with a ``tag`` (a dataset the Dagster assets announce in ``dataset_versions``) are
    dropped from L1 by notification and keyed in L2 by the dataset's version; untagged ones (raw
    collections, written by the ingest service) live in L1 only and are revalidated with
    ``probe(newest)``, a cheap bounded store read. On a miss one request per key fills while the
    others wait (and, through L2, one process per key while the others wait for its entry).
    """
    policy = st.strategy.cache_for(dataset)
    if policy.level == "off":
        return json_response(fill()[0])
    st.ensure_watcher()
    m = st.metrics
    if policy.l1:
        hit = _l1_get(st, key, probe)
        if m is not None:
            m.cache.labels("hit" if hit is not None else "miss").inc()
        if hit is not None:
            return json_response(hit)
    l2 = st.l2 if policy.l2 and tag is not None else None
    with st.hot.fill_lock(key):
        if policy.l1:
            hit = st.hot.get(key, probe)  # filled while this request waited
            if hit is not None:
                return json_response(hit)
        gen = st.hot.generation(tag)
        version = st.version(tag) if l2 is not None and tag is not None else None
        if l2 is not None and tag is not None and version is not None:
            got = _l2_get(st, l2, tag, version, key)
            if got is None and not l2.claim(tag, version, key):
                got = l2.wait(tag, version, key)
            if got is not None:
                if policy.l1:
                    st.hot.put(key, got[0], got[1], tag=tag, generation=gen, ttl_s=policy.l1_ttl_s)
                return json_response(got[0])
        body, newest = fill()
        if m is not None:
            m.store_reads.labels(dataset).inc()
        if l2 is not None and tag is not None and version is not None:
            l2.set(tag, version, key, body, newest, policy.l2_ttl_s)
        if policy.l1:
            st.hot.put(key, body, newest, tag=tag, generation=gen, ttl_s=policy.l1_ttl_s)
    return json_response(body)


def _l1_get(st: AppState, key: Hashable, probe: Callable[[int | None], bool]) -> bytes | None:
    started = time.perf_counter()
    hit = st.hot.get(key, probe)
    m = st.metrics
    if m is not None:
        m.cache_latency.labels("l1").observe(time.perf_counter() - started)
        m.cache_lookups.labels("l1", "hit" if hit is not None else "miss").inc()
    return hit


def _l2_get(st: AppState, l2: L2Cache, tag: str, version: int, key: Hashable) -> tuple[bytes, int | None] | None:
    started = time.perf_counter()
    errors, skipped = l2.errors, l2.skipped
    got = l2.get(tag, version, key)
    m = st.metrics
    if m is not None:
        m.cache_latency.labels("l2").observe(time.perf_counter() - started)
        result = (
            "hit"
            if got is not None
            else "error"
            if l2.errors != errors
            else "skipped"
            if l2.skipped != skipped
            else "miss"
        )
        m.cache_lookups.labels("l2", result).inc()
        m.l2_up.set(1 if l2.up else 0)
    return got
