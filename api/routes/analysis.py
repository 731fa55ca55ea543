"""``/analysis/*``: the analytics documents Dagster writes, served as stored.

``values`` is typed loosely on purpose: the analytics assets own their fields and add
new ones; the API passes them through rather than dropping what it does not know.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from api.deps import AppState, State, read_access
from api.models import AnalyticsPage, ErrorResponse, SimilarPage
from api.params import (
    MAX_LIMIT,
    ParamError,
    check_analytics_period,
    check_known,
    check_period,
    parse_pairs,
    parse_range,
)
from api.queries import Source, dumps, has_newer, read_latest, read_page
from api.routes.common import ERRORS, End, KnownPair, Start, cached, json_response, next_link
from dm_assets.analytics.pattern_series import PATTERN_INTERVALS, load_series
from dm_assets.analytics.patterns import (
    K_MAX,
    K_MIN,
    MAX_BARS,
    MAX_SYMBOLS,
    WINDOW_MAX,
    WINDOW_MIN,
    DenseSeries,
    HistoryTooShort,
    QueryIncomplete,
    history_bars,
    search,
)
from dm_assets.analytics.patterns import summary as pattern_summary
from dm_resources.contracts import CORRELATION_SYMBOL, duration_ms, now_ms

router = APIRouter(prefix="/analysis", tags=["analysis"], dependencies=[Depends(read_access)])

ANALYTICS_FIELDS = ("symbol", "kind", "interval", "window_end", "values", "computed_at")
ALimit = Annotated[
    int,
    Query(ge=1, le=MAX_LIMIT, description="results: the newest N without `start`, else a page forward from `start`"),
]
ANALYTICS_TICK_MS = 15 * 60_000  # the analytics schedule's cadence


def read_analytics(
    request: Request, st: AppState, symbol: str, kind: str, period: str, start: str | None, end: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    lo, hi = parse_range(start, end)
    src = Source("analytics", symbol, (("kind", kind), ("interval", period)), ANALYTICS_FIELDS)
    store = st.mongo
    step = min(duration_ms(period), ANALYTICS_TICK_MS)
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
    cacheable = start is None and end is None
    src = Source("analytics", symbol, (("kind", kind), ("interval", period)), ANALYTICS_FIELDS)
    key = ("analysis", src, limit, tuple(header.get("pairs") or ()))

    def body() -> tuple[bytes, int | None]:
        rows, nxt = read_analytics(request, st, symbol, kind, period, start, end, limit)
        if shape is not None:
            rows = [shape(r) for r in rows]
        out = dumps({**header, "count": len(rows), "rows": rows, "next": nxt})
        return out, (int(rows[-1]["window_end"]) if rows else None)

    if not cacheable:
        return json_response(body()[0])
    probe = lambda newest: has_newer(st.mongo, src, newest)  # noqa: E731
    return cached(st, key, f"analytics:{symbol}:{kind}:{period}", body, probe, dataset="analytics")


def _kind_route(kind: str, default_period: str, summary: str) -> None:
    def handler(
        request: Request,
        st: State,
        pair: KnownPair,
        period: Annotated[
            str, Query(description="interval label the results were computed on, e.g. 1m, 1h", max_length=8)
        ] = default_period,
        start: Start = None,
        end: End = None,
        limit: ALimit = 1,
    ) -> Response:
        check_analytics_period(period, kind=kind)
        return cached_latest(
            request, st, pair, kind, period, start, end, limit, {"pair": pair, "kind": kind, "period": period}
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


# --- pattern search ----------------------------------------------------------------------------------------

# Searches are CPU- and memory-bound (up to MAX_BARS bars, ~170 MB at the peak): one at a time per
# process, so they cannot take the threads or the memory of the cheap reads.
_SEARCHES = threading.BoundedSemaphore(1)
_SEARCH_WAIT_S = 30.0


@router.get(
    "/similar",
    summary="Past windows shaped like the latest one, and what followed them",
    response_model=SimilarPage,
    responses={**ERRORS, 503: {"model": ErrorResponse, "description": "too many searches in progress"}},
)
def similar(
    st: State,
    pair: KnownPair,
    period: Annotated[str, Query(description=f"candle interval: {', '.join(PATTERN_INTERVALS)}", max_length=8)] = "1h",
    window: Annotated[
        int, Query(ge=WINDOW_MIN, le=WINDOW_MAX, description="bars in the latest window, the shape searched for")
    ] = 60,
    k: Annotated[int, Query(ge=K_MIN, le=K_MAX, description="matches to return")] = 5,
    symbols: Annotated[
        str | None,
        Query(
            description=f"comma-separated symbols to search (at most {MAX_SYMBOLS}); default: the pair's own history",
            max_length=2000,
        ),
    ] = None,
) -> Response:
    """The k past windows whose shape is closest to the pair's latest `window` bars, and what followed each.

    Shape is the z-normalized close path (level and scale removed), compared by MASS over each
    symbol's history (a year of 1m and 5m, two of 15m, five of 1h and 4h, ten of 1d). Matches
    end before the latest window starts and do not overlap each other; windows with a missing or
    flagged bar are never matches. Each gives the return over the next `window` bars and their max
    drawdown. Fewer than two windows of the pair's history, or a latest window with missing bars, is
    a 422 that says so; so is a search over more than 2,200,000 bars (at most 4 symbols of 1m).
    """
    check_period(period, PATTERN_INTERVALS)
    wanted = parse_pairs(symbols, "symbols", max_pairs=MAX_SYMBOLS) or [pair]
    per_symbol = history_bars(period, duration_ms(period))
    if len(wanted) * per_symbol > MAX_BARS:
        raise ParamError(
            "symbols",
            f"{len(wanted)} symbols × {per_symbol:,} bars of {period} history exceed one search's budget of "
            f"{MAX_BARS:,} bars; list at most {MAX_BARS // per_symbol} symbols for {period}",
        )
    for p in wanted:
        if not st.pair_known(p):
            check_known(p, st.known_symbols(), "symbols")
    if not _SEARCHES.acquire(timeout=_SEARCH_WAIT_S):
        raise ParamError("window", "too many pattern searches in progress; retry shortly", status=503)
    try:
        store = st.mongo
        end = now_ms() + duration_ms(period)
        series: dict[str, DenseSeries] = {}
        source = {"precomputed_bars": 0, "candle_bars": 0}
        for sym in dict.fromkeys([pair, *wanted]):
            s, src = load_series(store, sym, period, end)
            series[sym] = s
            for key, n in src.items():
                source[key] += n
        try:
            res = search(series[pair], {s: series[s] for s in wanted}, window, k)
        except (HistoryTooShort, QueryIncomplete) as exc:
            raise ParamError("window", f"{exc} ({period})") from None
    finally:
        _SEARCHES.release()
    q = res.query
    body = {
        "pair": pair,
        "period": period,
        "window": window,
        "k": k,
        "symbols": wanted,
        "query": {"start": q.end - window * q.step, "end": q.end, "bars": q.n},
        "matches": [mt.to_dict() for mt in res.matches],
        "summary": pattern_summary(res.matches),
        "searched": res.searched,
        "source": source,
    }
    return json_response(dumps(body))
