"""``/data/*``: candles, trades, depth, funding — pages, "latest N" hot reads and NDJSON streams.

Bodies are built as dicts and rendered with orjson (see ``api.models`` for why); the
declared ``response_model`` is the schema clients and the tests hold the bodies to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api import candle_reads
from api.contract.filters import iso_z
from api.deps import AppState, State, known_pair, read_access
from api.models import (
    Candle,
    CandlesPage,
    DepthPage,
    DepthUpdate,
    FundingPage,
    FundingRate,
    MarkPrice,
    Trade,
    TradesPage,
)
from api.params import (
    CANDLE_PERIODS,
    DEFAULT_LIMIT,
    ParamError,
    check_period,
    normalise_pair,
    parse_after,
    parse_range,
)
from api.queries import Source, dumps, has_newer, iter_ndjson, read_latest, read_page
from api.routes.common import (
    ERRORS,
    NDJSON,
    After,
    End,
    Format,
    KnownPair,
    Limit,
    Pair,
    Start,
    cached,
    json_response,
    next_link,
)
from dm_resources.contracts import now_ms

router = APIRouter(prefix="/data", tags=["data"], dependencies=[Depends(read_access)])


CANDLE_FIELDS = tuple(Candle.model_fields)
TRADE_FIELDS = tuple(Trade.model_fields)
DEPTH_FIELDS = tuple(DepthUpdate.model_fields)
FUNDING_FIELDS = tuple(FundingRate.model_fields)
MARK_FIELDS = tuple(MarkPrice.model_fields)


def serve(
    request: Request,
    st: AppState,
    src: Source,
    *,
    start: str | None,
    end: str | None,
    limit: int | None,
    after: str | None,
    fmt: str,
    step_ms: int,
    header: dict[str, Any],
    route: str,
) -> Response:
    """One shared read path: stream, page forward from ``start``, or the latest ``limit`` rows (cached)."""
    lo, hi = parse_range(start, end)
    after_id = parse_after(after)
    store = st.mongo
    if fmt == "ndjson":
        check_stream_span(lo, hi, step_ms)
        stream = iter_ndjson(store, src, lo, hi, limit=limit or 0)
        return StreamingResponse(stream, media_type=NDJSON)
    n = limit or DEFAULT_LIMIT
    if lo is None:

        def latest_body() -> tuple[bytes, int | None]:
            rows = read_latest(store, src, n, end=hi, step_ms=step_ms, hints=st.hints)
            body = dumps({**header, "count": len(rows), "rows": rows, "next": None})
            return body, (int(rows[-1][src.time_field]) if rows else None)

        if hi is not None:
            return json_response(latest_body()[0])
        return cached(
            st, (route, src, hi, n), None, latest_body, lambda newest: has_newer(store, src, newest), dataset=route
        )
    rows, more = read_page(store, src, lo, hi, n, after_id, step_ms=step_ms)
    nxt = next_link(request, src, rows, more)
    return json_response(dumps({**header, "count": len(rows), "rows": rows, "next": nxt}))


class SdkCandle(Candle):
    timestamp: str = Field(description="open_time as ISO-8601 UTC")


class SdkPagination(BaseModel):
    limit: int
    offset: int
    returned: int
    has_more: bool


class SdkCandlesPage(BaseModel):
    """The data-manager SDK's candle page (``offset`` or ``sort_order`` given)."""

    model_config = ConfigDict(extra="forbid")

    pair: str
    period: str
    data: list[SdkCandle]
    pagination: SdkPagination
    sort_order: Literal["asc", "desc"]


# A raw stream covers at most this many rows at the series' typical spacing: a range, not all history.
MAX_STREAM_ROWS = 1_000_000


def check_stream_span(lo: int | None, hi: int | None, step_ms: int) -> None:
    """``format=ndjson`` streams ``[start, end)`` whole: the range must be given and bounded (422 naming the cap)."""
    cap_ms = MAX_STREAM_ROWS * step_ms
    if lo is None or (hi if hi is not None else now_ms()) - lo > cap_ms:
        days = cap_ms / 86_400_000
        raise ParamError(
            "start",
            f"format=ndjson streams at most {MAX_STREAM_ROWS} rows' worth of this series: give start and end "
            f"at most {days:g} days apart, and stream the next range after it",
        )


CandleFormat = Annotated[
    Literal["json", "ndjson", "arrow", "csv"],
    Query(
        description="ndjson, arrow (Arrow IPC stream) and csv stream the whole [start, end) range; "
        "arrow is the fastest for bulk reads"
    ),
]
_BULK: dict[str, tuple[Callable[..., Any], str]] = {
    "ndjson": (candle_reads.iter_ndjson, NDJSON),
    "arrow": (candle_reads.iter_arrow, candle_reads.ARROW_MEDIA_TYPE),
    "csv": (candle_reads.iter_csv, candle_reads.CSV_MEDIA_TYPE),
}


@router.get(
    "/candles",
    response_model=CandlesPage | SdkCandlesPage,
    responses={
        **ERRORS,
        200: {
            "content": {
                NDJSON: {"schema": Candle.model_json_schema()},
                candle_reads.ARROW_MEDIA_TYPE: {},
                candle_reads.CSV_MEDIA_TYPE: {},
            }
        },
    },
)
async def candles(
    st: State,
    request: Request,
    pair: Pair,
    period: Annotated[
        str, Query(description=f"one of {', '.join(CANDLE_PERIODS)}", max_length=8, examples=list(CANDLE_PERIODS))
    ] = "1m",
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    format: CandleFormat = "json",
    offset: Annotated[
        int | None,
        Query(
            ge=0, le=MAX_SDK_OFFSET, description="candles to skip (the data-manager SDK's paging; selects its shape)"
        ),
    ] = None,
    sort_order: Annotated[
        Literal["asc", "desc"] | None,
        Query(description="asc or desc (the data-manager SDK's parameter; selects its shape)"),
    ] = None,
) -> Response:
    """Candles in ascending ``open_time``.

    Without ``start``: the newest ``limit`` candles (before ``end`` if given), served from a
    hot cache that is dropped as soon as the candle assets write this dataset. With ``start``: a
    page forward from it and a ``next`` link while more rows exist. ``format=ndjson`` streams
    the whole range, one candle per line; ``arrow`` and ``csv`` stream it columnar.

    With ``offset`` or ``sort_order`` (what the data-manager SDK the TA bot uses sends) the answer
    is the SDK's shape: ``data[]`` rows with an ISO-8601 ``timestamp`` beside the candle's fields,
    ``offset`` candles skipped (from the newest without ``start``, from ``start`` with it), in
    ``sort_order`` (default ``asc``), and ``pagination``.
    """
    if offset is not None or sort_order is not None:
        if format != "json":
            raise ParamError("format", "offset and sort_order page JSON answers; streams take start and end")
        return await run_in_threadpool(
            _candles_sdk, st, pair, period, start, end, limit, offset or 0, sort_order or "asc"
        )
    if format == "json" and start is None and end is None and st.hot.notified and st.strategy.cache_for("candles").l1:
        # A hit needs no thread, no store and no validation beyond the key: only a validated
        # (pair, period) was ever stored under it.
        with contextlib.suppress(ParamError):
            n = limit or DEFAULT_LIMIT
            src = Source("candles", normalise_pair(pair), (("interval", period),), CANDLE_FIELDS)
            hit = st.hot.get(("candles", src, n), _no_probe)
            if hit is not None:
                if st.metrics is not None:
                    st.metrics.cache.labels("hit").inc()
                    st.metrics.cache_lookups.labels("l1", "hit").inc()
                return Response(content=hit, media_type="application/json")
    return await run_in_threadpool(_candles, st, request, pair, period, start, end, limit, format)


def _no_probe(_newest: int | None) -> bool:
    return False


MAX_SDK_OFFSET = 50_000


def _candles_sdk(
    st: AppState,
    pair: str,
    period: str,
    start: str | None,
    end: str | None,
    limit: int | None,
    offset: int,
    sort_order: str,
) -> Response:
    """The data-manager SDK's candle page (TA-02): ``data[]`` with ``timestamp``, ``offset``, ``sort_order``."""
    sym = known_pair(pair, st)
    check_period(period)
    lo, hi = parse_range(start, end)
    n = limit or DEFAULT_LIMIT
    cs = st.candles
    if lo is None:  # the newest offset + n candles, of which the newest `offset` are skipped
        rows = candle_reads.read_latest(cs, sym, period, CANDLE_FIELDS, offset + n, hi)
        rows = rows[: max(0, len(rows) - offset)]
        more = len(rows) == n and bool(rows) and cs.first_time(sym, period) not in (None, rows[0]["open_time"])
    else:
        page, more = candle_reads.read_page(cs, sym, period, CANDLE_FIELDS, lo, hi, offset + n)
        rows = page[offset:]
    if sort_order == "desc":
        rows.reverse()
    data = [{"timestamp": iso_z(r["open_time"]), **r} for r in rows]
    body = {
        "pair": sym,
        "period": period,
        "data": data,
        "pagination": {"limit": n, "offset": offset, "returned": len(data), "has_more": bool(more)},
        "sort_order": sort_order,
    }
    return json_response(dumps(body))


def _candles(
    st: AppState,
    request: Request,
    pair: str,
    period: str,
    start: str | None,
    end: str | None,
    limit: int | None,
    format: str,
) -> Response:
    sym = known_pair(pair, st)
    check_period(period)
    lo, hi = parse_range(start, end)
    cs = st.candles
    if format in _BULK:
        render, media = _BULK[format]
        return StreamingResponse(render(cs, sym, period, CANDLE_FIELDS, lo, hi, limit=limit or 0), media_type=media)
    n = limit or DEFAULT_LIMIT
    header = {"pair": sym, "period": period}
    src = Source("candles", sym, (("interval", period),), CANDLE_FIELDS)
    if lo is not None:
        rows, more = candle_reads.read_page(cs, sym, period, CANDLE_FIELDS, lo, hi, n)
        nxt = next_link(request, src, rows, more)
        return json_response(dumps({**header, "count": len(rows), "rows": rows, "next": nxt}))

    def latest_body() -> tuple[bytes, int | None]:
        rows = candle_reads.read_latest(cs, sym, period, CANDLE_FIELDS, n, hi)
        body = dumps({**header, "count": len(rows), "rows": rows, "next": None})
        return body, (int(rows[-1]["open_time"]) if rows else None)

    if hi is not None:
        return Response(content=latest_body()[0], media_type="application/json")
    tag = f"candles:{sym}:{period}"

    def probe(newest: int | None) -> bool:
        last = cs.last_time(sym, period)
        return last is not None and (newest is None or last > newest)

    return cached(st, ("candles", src, n), tag, latest_body, probe, dataset="candles")


@router.get(
    "/trades",
    response_model=TradesPage,
    responses={**ERRORS, 200: {"content": {NDJSON: {"schema": Trade.model_json_schema()}}}},
)
def trades(
    st: State,
    request: Request,
    pair: KnownPair,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    after: After = None,
    format: Format = "json",
) -> Response:
    """Aggregated trades in ascending ``trade_time``; prices and quantities as exact decimal strings."""
    sym = pair
    src = Source("agg_trades", sym, (), TRADE_FIELDS)
    return serve(
        request,
        st,
        src,
        start=start,
        end=end,
        limit=limit,
        after=after,
        fmt=format,
        step_ms=1_000,
        header={"pair": sym},
        route="trades",
    )


@router.get(
    "/depth",
    response_model=DepthPage,
    responses={**ERRORS, 200: {"content": {NDJSON: {"schema": DepthUpdate.model_json_schema()}}}},
)
def depth(
    st: State,
    request: Request,
    pair: KnownPair,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    after: After = None,
    format: Format = "json",
) -> Response:
    """Diff depth updates in ascending ``event_time``; levels are ``[price, qty]`` decimal strings."""
    sym = pair
    src = Source("depth_updates", sym, (), DEPTH_FIELDS)
    return serve(
        request,
        st,
        src,
        start=start,
        end=end,
        limit=limit,
        after=after,
        fmt=format,
        step_ms=250,
        header={"pair": sym},
        route="depth",
    )


@router.get(
    "/funding",
    response_model=FundingPage,
    responses={**ERRORS, 200: {"content": {NDJSON: {"schema": FundingRate.model_json_schema()}}}},
)
def funding(
    st: State,
    request: Request,
    pair: KnownPair,
    source: Annotated[
        Literal["funding_rates", "mark_prices"],
        Query(description="settled funding rates, or mark price updates with the predicted rate"),
    ] = "funding_rates",
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    format: Format = "json",
) -> Response:
    """Funding rates per funding time (intervals differ by symbol: 8h, 4h, 1h), or mark prices."""
    sym = pair
    fields = FUNDING_FIELDS if source == "funding_rates" else MARK_FIELDS
    src = Source(source, sym, (), fields)
    step = 3_600_000 if source == "funding_rates" else 1_000
    return serve(
        request,
        st,
        src,
        start=start,
        end=end,
        limit=limit,
        after=None,
        fmt=format,
        step_ms=step,
        header={"pair": sym, "source": source},
        route="funding",
    )
