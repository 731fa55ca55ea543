"""What the route modules share: query parameter types, error responses, the pair dependency,
paging links and the one cached-read path. Route modules import this, never each other."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request, Response

from api.deps import AppState, State, known_pair
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
) -> Response:
    """The one hot-cache read path: a hit, or one request per key fills while the others wait.

    Entries with a ``tag`` (a dataset the Dagster assets announce in ``dataset_versions``) are
    dropped by notification; untagged ones (raw collections, written by the ingest service)
    are revalidated with ``probe(newest)``, a cheap bounded store read.
    """
    st.ensure_watcher()
    hit = st.hot.get(key, probe)
    if st.metrics is not None:
        st.metrics.cache.labels("hit" if hit is not None else "miss").inc()
    if hit is None:
        with st.hot.fill_lock(key):
            hit = st.hot.get(key, probe)  # filled while this request waited
            if hit is None:
                gen = st.hot.generation(tag)
                hit, newest = fill()
                st.hot.put(key, hit, newest, tag=tag, generation=gen)
    return json_response(hit)
