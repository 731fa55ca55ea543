"""``GET /data/orderbook``: the rebuilt order book (top N) at a time, or a 404 that says why there is none.

The rows come from the ``orderbook_snapshots`` asset, which stores a book only where it is
*proven* (see dm_assets/orderbook/book.py), one every 10 s. The book at ``at`` is the newest
row at or before ``at`` when it is less than one step (10 s) older and ``at`` is in no span
without a valid book (a break between that row and ``at`` makes it no book of ``at``).
Otherwise there is no valid book at ``at``, and serving the last one as if it were
current is how a careless client trades on a book minutes old: the answer is a 404 that names
why, read from the last rebuild's outcome (``orderbook_days``):

* inside a span without a valid book: its start, end, reason (a continuity break, a crossed
  book, waiting for a snapshot's diffs) and status (``open``: the next snapshot can end it;
  ``healed``: a snapshot re-synced it; ``unrecoverable``: a past day's, nothing can);
* after what the last rebuild proved (the live edge: rebuilt every 5 minutes);
* a day never rebuilt.

``allow_stale=true`` serves the last valid book before such an instant instead, marked
``stale: true`` with its ``age_ms`` and the span it precedes. ``at`` in the future is a 422;
before the symbol's first order book (its first depth snapshot) a 404 that says so.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field

from api.deps import State, known_pair, read_access
from api.models import ErrorResponse, _Model
from api.params import ParamError, parse_time
from api.queries import dumps
from dm_resources.contracts import now_ms
from dm_resources.intervals import DAY_MS, MINUTE_MS

router = APIRouter(prefix="/data", tags=["data"], dependencies=[Depends(read_access)])

CADENCE_MS = 10_000  # dm_assets.orderbook.book.DEFAULT_CADENCE_MS
MAX_AGE_MS = 15 * MINUTE_MS  # how far back allow_stale looks for the last valid book
FUTURE_SLACK_MS = 1_000  # clients' clocks run a little ahead
DAYS = "orderbook_days"
FIELDS = ("snapshot_time", "last_update_id", "last_event_time", "bids", "asks", "mid", "spread_bps", "imbalance")


class InvalidSpan(_Model):
    start: int
    end: int
    reason: str
    status: str = Field(description="open (the next snapshot can end it), healed, or unrecoverable (a past day's)")


class OrderBook(_Model):
    pair: str
    at: int = Field(description="the time asked for (epoch ms)")
    snapshot_time: int = Field(description="time of the book served: the newest proven book at or before `at`")
    age_ms: int = Field(description="at − snapshot_time")
    stale: bool = Field(description="true only with allow_stale=true: no valid book at `at`, this is the last one")
    invalid: InvalidSpan | None = Field(default=None, description="with stale: the span without a book `at` is in")
    last_update_id: int = Field(description="Binance update id (u) of the last diff applied")
    last_event_time: int
    depth: int = Field(description="levels per side returned")
    bids: list[list[str]] = Field(description="[price, qty] decimal strings, best (highest) first")
    asks: list[list[str]] = Field(description="[price, qty] decimal strings, best (lowest) first")
    mid: float | None = None
    spread_bps: float | None = None
    imbalance: float | None = Field(default=None, description="(Σbid − Σask)/(Σbid + Σask) over the stored levels")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "token required (DM_API_TOKEN with DM_API_PROTECT_READS)"},
    404: {
        "model": ErrorResponse,
        "description": "unknown pair; or no valid book at `at`: the message names the span without a book and its "
        "reason, or says the book is not proven that far yet, or that `at` is before the symbol's first order book",
    },
    422: {
        "model": ErrorResponse,
        "description": "a parameter is malformed, or `at` is in the future; the message names it",
    },
}


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def shape(pair: str, at: int, row: dict[str, Any], depth: int, span: dict[str, Any] | None = None) -> dict[str, Any]:
    bids = row.get("bids") or []
    asks = row.get("asks") or []
    t = int(row["snapshot_time"])
    return {
        "pair": pair,
        "at": at,
        "snapshot_time": t,
        "age_ms": at - t,
        "stale": at - t >= CADENCE_MS,
        "invalid": span,
        "last_update_id": int(row["last_update_id"]),
        "last_event_time": int(row["last_event_time"]),
        "depth": max(len(bids[:depth]), len(asks[:depth])),
        "bids": bids[:depth],
        "asks": asks[:depth],
        "mid": row.get("mid"),
        "spread_bps": row.get("spread_bps"),
        "imbalance": row.get("imbalance"),
    }


def _summary(st: State, sym: str, t: int) -> dict[str, Any] | None:
    day = dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC).date().isoformat()
    doc = st.mongo.collection(DAYS).find_one({"_id": f"{sym}:{day}"}, {"_id": 0, "summary": 1})
    return (doc or {}).get("summary")


def _history_start_after(st: State, sym: str, t: int) -> int | None:
    """The symbol's first order book, when it starts after ``t`` (within a week: the days' summaries are small)."""
    lo = t - t % DAY_MS
    docs = st.mongo.read_range(DAYS, sym, lo, lo + 8 * DAY_MS, projection={"_id": 0, "summary": 1})
    for doc in docs:
        start = (doc.get("summary") or {}).get("history_start")
        if start is not None and start > t:
            return int(start)
        if doc.get("summary"):
            return None
    return None


def _span_at(summary: dict[str, Any] | None, t: int) -> dict[str, Any] | None:
    """The span without a valid book that ``t`` falls in, per the last rebuild of its day."""
    for s in (summary or {}).get("spans") or []:
        if s["start"] <= t < s["end"]:
            return dict(s)
    return None


def explain(st: State, sym: str, t: int, summary: dict[str, Any] | None, span: dict[str, Any] | None) -> str:
    """Why there is no valid book at ``t`` (or raise: ``t`` is before the symbol's first order book)."""
    before = summary.get("history_start") if summary else _history_start_after(st, sym, t)
    if before is not None and t < int(before):
        raise ParamError(
            "at",
            f"{_iso(t)} is before the first order book of {sym}: its history starts at {_iso(int(before))} "
            "(its first depth snapshot)",
            status=404,
        )
    if span is not None:
        return (
            f"no valid order book for {sym} at {_iso(t)}: {span['status']} span without a book from "
            f"{_iso(span['start'])} to {_iso(span['end'])}: {span['reason']}"
        )
    if summary is None:
        return f"no order book was rebuilt for {sym} on {_iso(t)[:10]}"
    hi, as_of = int(summary["window"][1]), int(summary["as_of"])
    if t >= hi:
        return (
            f"the order book of {sym} is not proven at {_iso(t)} yet: the last rebuild (run at {_iso(as_of)}) "
            f"judged it up to {_iso(hi)}; it is rebuilt every 5 minutes"
        )
    return f"no proven book row at or within 10 s before {_iso(t)} (rows are every 10 s after a sync)"


def _last_valid(st: State, sym: str, before: int, proj: dict[str, int]) -> dict[str, Any] | None:
    rows = st.mongo.read_range("orderbook_snapshots", sym, before - MAX_AGE_MS, before + 1, projection=proj)
    return rows[-1] if rows else None


@router.get("/orderbook", response_model=OrderBook, responses=ERRORS)
def orderbook(
    st: State,
    pair: Annotated[str, Query(description="Symbol, e.g. BTCUSDT (case-insensitive)", max_length=64)],
    depth: Annotated[int, Query(ge=1, le=1000, description="levels per side (at most what was stored, 20)")] = 20,
    at: Annotated[
        str | None,
        Query(description="ISO-8601 or epoch ms; the book valid at that instant (default now)", max_length=64),
    ] = None,
    allow_stale: Annotated[
        bool,
        Query(
            description="when there is no valid book at `at`, return the last valid one before it (stale: true, age_ms)"
        ),
    ] = False,
) -> Response:
    """The rebuilt order book (top N levels, exact decimal strings) valid at `at`.

    No valid book at `at` (inside a span without one, or after what the last rebuild proved) is a
    404 naming the span and its reason; `allow_stale=true` returns the last valid book before it
    with `stale: true`, `age_ms` and the span instead.
    """
    sym = known_pair(pair, st)
    now = now_ms()
    t = parse_time(at, "at")
    t = now if t is None else t
    if t > now + FUTURE_SLACK_MS:
        raise ParamError("at", f"{_iso(t)} is in the future (now is {_iso(now)}): there is no book there yet")
    proj = {f: 1 for f in FIELDS} | {"_id": 0}
    summary = _summary(st, sym, t)
    span = _span_at(summary, t)
    if span is None:  # a row less than a step old is the book at `at` unless a break fell in between
        fresh = st.mongo.read_range("orderbook_snapshots", sym, t - CADENCE_MS + 1, t + 1, projection=proj)
        if fresh:
            return Response(content=dumps(shape(sym, t, fresh[-1], depth)), media_type="application/json")
    why = explain(st, sym, t, summary, span)
    if not allow_stale:
        raise ParamError("at", f"{why}; pass allow_stale=true for the last valid book before it", status=404)
    last = _last_valid(st, sym, min(t, int(span["start"])) if span else t, proj)
    if last is None:
        window = f"{MAX_AGE_MS // MINUTE_MS} minutes"
        raise ParamError("at", f"{why}; and no valid book within {window} before it", status=404)
    body = shape(sym, t, last, depth, span)
    body["stale"] = True
    return Response(content=dumps(body), media_type="application/json")
