"""``GET /data/orderbook``: the rebuilt order book (top N) at or before a time.

The rows come from the ``orderbook_snapshots`` asset, which stores a book only where it is
*proven* (see dm_assets/orderbook/book.py). So "the book at ``at``" is the newest row at or
before ``at``; when that row is older than one cadence (10 s) the book at ``at`` itself was
not proven (a continuity break, no snapshot yet, or the live edge not rebuilt yet) and the
answer says so with ``stale: true`` and its ``age_ms``. Nothing older than ``MAX_AGE_MS`` is
served: a book that old is not a book of ``at``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field

from api.deps import State, known_pair, read_access
from api.models import ErrorResponse, _Model
from api.params import ParamError, parse_time
from api.queries import dumps
from dm_resources.contracts import now_ms

router = APIRouter(prefix="/data", tags=["data"], dependencies=[Depends(read_access)])

CADENCE_MS = 10_000  # dm_assets.orderbook.book.DEFAULT_CADENCE_MS
MAX_AGE_MS = 15 * 60_000  # the order-book schedule runs every 5 minutes; 3 ticks of slack
FIELDS = ("snapshot_time", "last_update_id", "last_event_time", "bids", "asks", "mid", "spread_bps", "imbalance")


class OrderBook(_Model):
    pair: str
    at: int = Field(description="the time asked for (epoch ms)")
    snapshot_time: int = Field(description="time of the book served: the newest proven book at or before `at`")
    age_ms: int = Field(description="at − snapshot_time")
    stale: bool = Field(description="true when the book at `at` itself was not proven (age ≥ 10 s)")
    last_update_id: int = Field(description="Binance update id (u) of the last diff applied")
    last_event_time: int
    depth: int = Field(description="levels per side returned")
    bids: list[list[str]] = Field(description="[price, qty] decimal strings, best (highest) first")
    asks: list[list[str]] = Field(description="[price, qty] decimal strings, best (lowest) first")
    mid: float | None = None
    spread_bps: float | None = None
    imbalance: float | None = Field(default=None, description="(Σbid − Σask)/(Σbid + Σask) over the stored levels")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "token required (DM_API_PROTECT_READS)"},
    404: {"model": ErrorResponse, "description": "unknown pair, or no proven book within 15 minutes before `at`"},
    422: {"model": ErrorResponse, "description": "a parameter is malformed; the message names it"},
}


def shape(pair: str, at: int, row: dict[str, Any], depth: int) -> dict[str, Any]:
    bids = row.get("bids") or []
    asks = row.get("asks") or []
    t = int(row["snapshot_time"])
    return {
        "pair": pair,
        "at": at,
        "snapshot_time": t,
        "age_ms": at - t,
        "stale": at - t >= CADENCE_MS,
        "last_update_id": int(row["last_update_id"]),
        "last_event_time": int(row["last_event_time"]),
        "depth": max(len(bids[:depth]), len(asks[:depth])),
        "bids": bids[:depth],
        "asks": asks[:depth],
        "mid": row.get("mid"),
        "spread_bps": row.get("spread_bps"),
        "imbalance": row.get("imbalance"),
    }


@router.get("/orderbook", response_model=OrderBook, responses=ERRORS)
def orderbook(
    st: State,
    pair: Annotated[str, Query(description="Symbol, e.g. BTCUSDT (case-insensitive)", max_length=64)],
    depth: Annotated[int, Query(ge=1, le=1000, description="levels per side (at most what was stored, 20)")] = 20,
    at: Annotated[
        str | None, Query(description="ISO-8601 or epoch ms; the book at or before it (default now)", max_length=64)
    ] = None,
) -> Response:
    """The rebuilt order book (top N levels, exact decimal strings) at or before `at`."""
    sym = known_pair(pair, st)
    t = parse_time(at, "at")
    t = now_ms() if t is None else t
    proj = {f: 1 for f in FIELDS} | {"_id": 0}
    rows = st.mongo.read_range("orderbook_snapshots", sym, t - MAX_AGE_MS, t + 1, projection=proj)
    if not rows:
        raise ParamError(
            "at",
            f"no proven order book for {sym} within {MAX_AGE_MS // 60_000} minutes before {t} "
            "(no snapshot synced, a continuity break, or not rebuilt yet)",
            status=404,
        )
    return Response(content=dumps(shape(sym, t, rows[-1], depth)), media_type="application/json")
