"""``/analysis/*``: the analytics documents Dagster writes, served as stored.

``values`` is typed loosely on purpose: the analytics assets own their fields and add
new ones; the API passes them through rather than dropping what it does not know.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from api.deps import AppState, State, known_pair, read_access
from api.models import AnalyticsPage, ErrorResponse
from api.params import MAX_LIMIT, check_analytics_period, check_known, parse_pairs, parse_range
from api.queries import Source, dumps, has_newer, read_latest, read_page
from api.routes.data import End, Pair, Start, next_link

router = APIRouter(prefix="/analysis", tags=["analysis"], dependencies=[Depends(read_access)])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "token required (DM_API_PROTECT_READS)"},
    404: {"model": ErrorResponse, "description": "unknown pair"},
    422: {"model": ErrorResponse, "description": "a parameter is malformed; the message names it"},
}
CORRELATION_SYMBOL = "*"  # dm_assets.analytics.build.CORRELATION_SYMBOL
ANALYTICS_FIELDS = ("symbol", "kind", "interval", "window_end", "values", "computed_at")
ALimit = Annotated[
    int,
    Query(ge=1, le=MAX_LIMIT, description="results: the newest N without `start`, else a page forward from `start`"),
]
_UNITS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000, "M": 30 * 86_400_000}
ANALYTICS_TICK_MS = 15 * 60_000  # the analytics schedule's cadence


def label_ms(label: str) -> int:
    return int(label[:-1]) * _UNITS[label[-1]]


def read_analytics(
    request: Request, st: AppState, symbol: str, kind: str, period: str, start: str | None, end: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    lo, hi = parse_range(start, end)
    src = Source("analytics", symbol, (("kind", kind), ("interval", period)), ANALYTICS_FIELDS)
    store = st.mongo
    step = min(label_ms(period), ANALYTICS_TICK_MS)
    if lo is not None:
        rows, more = read_page(store, src, lo, hi, limit, step_ms=step)
        return rows, next_link(request, src, rows, more)
    return read_latest(store, src, limit, end=hi, step_ms=step, hints=st.hints), None


def cached_latest(
    request: Request,
    st: AppState,
    symbol: str,
    kind: str,
    period: str,
    start: str | None,
    end: str | None,
    limit: int,
    header: dict[str, Any],
    shape: Any = None,
) -> Response:
    """Latest results through the hot cache (dropped when a newer ``window_end`` lands); pages uncached."""
    cacheable = st.api.cache_enabled and start is None and end is None
    src = Source("analytics", symbol, (("kind", kind), ("interval", period)), ANALYTICS_FIELDS)
    key = ("analysis", src, limit, tuple(header.get("pairs") or ()))

    def body() -> bytes:
        rows, nxt = read_analytics(request, st, symbol, kind, period, start, end, limit)
        if shape is not None:
            rows = [shape(r) for r in rows]
        out = dumps({**header, "count": len(rows), "rows": rows, "next": nxt})
        if cacheable:
            st.hot.put(key, out, int(rows[-1]["window_end"]) if rows else None)
        return out

    if not cacheable:
        return Response(content=body(), media_type="application/json")
    probe = lambda newest: has_newer(st.mongo, src, newest)  # noqa: E731
    cached = st.hot.get(key, probe)
    if st.metrics is not None:
        st.metrics.cache.labels("hit" if cached is not None else "miss").inc()
    if cached is None:
        with st.hot.fill_lock(key):
            cached = st.hot.get(key, probe)  # filled while this request waited
            if cached is None:
                cached = body()
    return Response(content=cached, media_type="application/json")


def _kind_route(kind: str, default_period: str, summary: str) -> None:
    def handler(
        request: Request,
        st: State,
        pair: Pair,
        period: Annotated[
            str, Query(description="interval label the results were computed on, e.g. 1m, 1h", max_length=8)
        ] = default_period,
        start: Start = None,
        end: End = None,
        limit: ALimit = 1,
    ) -> Response:
        sym = known_pair(pair, st)
        check_analytics_period(period, kind=kind)
        return cached_latest(
            request, st, sym, kind, period, start, end, limit, {"pair": sym, "kind": kind, "period": period}
        )

    handler.__doc__ = summary
    handler.__name__ = f"analysis_{kind}"
    router.add_api_route(
        f"/{kind}",
        handler,
        methods=["GET"],
        response_model=AnalyticsPage,
        responses=ERRORS,
        name=f"analysis_{kind}",
        summary=summary.split(".")[0],
    )


_kind_route("volatility", "1m", "Realized volatility (close-to-close, Parkinson, Garman-Klass) per window.")
_kind_route("volume", "1m", "Volume profile, VWAP and volume anomalies per window.")
_kind_route("spread", "1h", "Bid/ask spread and book depth statistics per window.")
_kind_route("trend", "1m", "Moving-average crossovers, regression slope and ADX per window.")
_kind_route("funding", "30d", "Funding rate statistics over the lookback.")


def subset_correlation(values: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """Keep only the requested pairs in every window's symbol list, matrix and graph."""
    if not pairs:
        return values
    out = dict(values)
    windows = []
    for w in values.get("windows") or []:
        if not isinstance(w, dict) or not isinstance(w.get("symbols"), list):
            windows.append(w)
            continue
        syms: list[str] = w["symbols"]
        idx = [i for i, s in enumerate(syms) if s in pairs]
        nw = dict(w)
        nw["symbols"] = [syms[i] for i in idx]
        matrix = w.get("matrix")
        if isinstance(matrix, list) and len(matrix) == len(syms):
            nw["matrix"] = [[matrix[i][j] for j in idx] for i in idx]
        graph = w.get("graph")
        if isinstance(graph, dict):
            keep = set(nw["symbols"])
            ng = dict(graph)
            if isinstance(graph.get("nodes"), list):
                ng["nodes"] = [n for n in graph["nodes"] if n in keep]
            if isinstance(graph.get("edges"), list):
                ng["edges"] = [
                    e for e in graph["edges"] if isinstance(e, dict) and {e.get("source"), e.get("target")} <= keep
                ]
            nw["graph"] = ng
        windows.append(nw)
    out["windows"] = windows
    return out


@router.get("/correlation", response_model=AnalyticsPage, responses=ERRORS)
def correlation(
    st: State,
    request: Request,
    pairs: Annotated[
        str | None,
        Query(description="comma-separated pairs to keep, e.g. BTCUSDT,ETHUSDT; all when omitted", max_length=2000),
    ] = None,
    period: Annotated[
        str, Query(description="interval the returns were computed on: 1m 5m 15m 1h 4h 1d", max_length=8)
    ] = "1m",
    start: Start = None,
    end: End = None,
    limit: ALimit = 1,
) -> Response:
    """Cross-pair return correlation matrices (one per window length) and the |ρ| ≥ threshold graph."""
    wanted = parse_pairs(pairs)
    for p in wanted:
        if not st.pair_known(p):
            check_known(p, st.known_symbols(), "pairs")
    check_analytics_period(period, kind="correlation")

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        if isinstance(row.get("values"), dict):
            row["values"] = subset_correlation(row["values"], wanted)
        return row

    header = {"pair": CORRELATION_SYMBOL, "kind": "correlation", "period": period, "pairs": wanted}
    resp = cached_latest(request, st, CORRELATION_SYMBOL, "correlation", period, start, end, limit, header, shape=shape)
    return resp
