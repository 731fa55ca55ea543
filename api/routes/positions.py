"""Typed reads of the trade engine's records: ``/positions`` and ``/pnl/daily`` with OpenAPI models.

What a new service would use instead of the generic ``/api/v1`` contract: parameters are
named and typed, responses have schemas. Decimals are exact decimal strings, times
ISO-8601 UTC. Reads follow ``DM_API_PROTECT_READS``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.contract.datasets import POSITION_SIDES
from api.contract.rows import DailyPnl, Dec, Position
from api.deps import State, private_read
from api.models import ErrorResponse
from api.params import ParamError, normalise_pair
from dm_resources.metadata.platform import Cond, PlatformTables

router = APIRouter(tags=["positions"], dependencies=[Depends(private_read)])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
MAX_ROWS = 1000
MAX_DAYS = 3660


class PositionList(BaseModel):
    count: int
    has_more: bool
    positions: list[Position]


class DailyPnlList(BaseModel):
    days: list[DailyPnl]
    total: Dec = Field(description="sum of daily_pnl over the returned days")


Symbol = Annotated[str | None, Query(description="e.g. BTCUSDT", max_length=64)]
Strategy = Annotated[str | None, Query(max_length=128)]
Side = Annotated[str | None, Query(description=f"one of {', '.join(POSITION_SIDES)}", max_length=8)]
Limit = Annotated[int, Query(ge=1, le=MAX_ROWS)]
Offset = Annotated[int, Query(ge=0, le=100_000)]


def _conds(symbol: str | None, strategy_id: str | None, side: str | None) -> list[Cond]:
    out: list[Cond] = []
    if symbol is not None:
        out.append(Cond("symbol", "eq", normalise_pair(symbol, "symbol")))
    if strategy_id is not None:
        out.append(Cond("strategy_id", "eq", strategy_id))
    if side is not None:
        if side not in POSITION_SIDES:
            raise ParamError("position_side", f"{side!r} is not one of {', '.join(POSITION_SIDES)}")
        out.append(Cond("position_side", "eq", side))
    return out


def _list(st: Any, conds: list[Cond], sort: list[tuple[str, int]], limit: int, offset: int) -> PositionList:
    rows, more = PlatformTables(st.meta).query("positions", conds, sort=sort, limit=limit, offset=offset)
    return PositionList(count=len(rows), has_more=more, positions=[Position.model_validate(r) for r in rows])


@router.get("/positions", response_model=PositionList, responses=ERRORS)
async def positions(
    st: State,
    status: Annotated[Literal["open", "closed"] | None, Query()] = None,
    symbol: Symbol = None,
    strategy_id: Strategy = None,
    position_side: Side = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PositionList:
    """Positions, oldest first (by when this service first stored them)."""
    conds = _conds(symbol, strategy_id, position_side)
    if status is not None:
        conds.append(Cond("status", "eq", status))
    return await run_in_threadpool(_list, st, conds, [("created_at", 1)], limit, offset)


@router.get("/positions/open", response_model=PositionList, responses=ERRORS)
async def open_positions(
    st: State, symbol: Symbol = None, strategy_id: Strategy = None, position_side: Side = None
) -> PositionList:
    """Every open position (at most one per symbol and side)."""
    conds = [*_conds(symbol, strategy_id, position_side), Cond("status", "eq", "open")]
    return await run_in_threadpool(_list, st, conds, [("symbol", 1), ("position_side", 1)], MAX_ROWS, 0)


@router.get("/positions/history", response_model=PositionList, responses=ERRORS)
async def position_history(
    st: State,
    symbol: Symbol = None,
    strategy_id: Strategy = None,
    from_: Annotated[dt.datetime | None, Query(alias="from", description="closed at or after (ISO-8601)")] = None,
    to: Annotated[dt.datetime | None, Query(description="closed before (ISO-8601)")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PositionList:
    """Closed positions, most recently closed first."""
    conds = [*_conds(symbol, strategy_id, None), Cond("status", "eq", "closed")]
    lo, hi = _aware(from_, "from"), _aware(to, "to")
    if lo is not None and hi is not None and lo >= hi:
        raise ParamError("from", "from must be before to")
    if lo is not None:
        conds.append(Cond("closed_at", "gte", lo))
    if hi is not None:
        conds.append(Cond("closed_at", "lt", hi))
    return await run_in_threadpool(_list, st, conds, [("closed_at", -1)], limit, offset)


@router.get("/positions/{position_id}", response_model=Position, responses=ERRORS)
async def position(st: State, position_id: str) -> Position:
    """One position by its id."""
    if len(position_id) > 64:
        raise ParamError("position_id", "at most 64 characters", where="path")
    rows, _ = await run_in_threadpool(
        PlatformTables(st.meta).query, "positions", [Cond("position_id", "eq", position_id)], limit=1
    )
    if not rows:
        raise ParamError("position_id", f"no position {position_id!r}", status=404, where="path")
    return Position.model_validate(rows[0])


def _aware(value: dt.datetime | None, param: str) -> dt.datetime | None:
    """UTC; an offset that moves the time past year 1 or 9999 (``0001-01-01T00:00:00+01:00``) is a 422."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    except OverflowError:
        raise ParamError(param, f"{value.isoformat()} is outside years 1..9999 in UTC") from None


@router.get("/pnl/daily", response_model=DailyPnlList, responses=ERRORS)
async def daily_pnl(
    st: State,
    from_: Annotated[dt.date | None, Query(alias="from", description="first day, YYYY-MM-DD (inclusive)")] = None,
    to: Annotated[dt.date | None, Query(description="last day, YYYY-MM-DD (inclusive)")] = None,
) -> DailyPnlList:
    """Daily PnL rows in ``[from, to]``, oldest first (at most 3,660 days)."""
    if from_ is not None and to is not None and from_ > to:
        raise ParamError("from", "from must not be after to")
    conds: list[Cond] = []
    if from_ is not None:
        conds.append(Cond("date", "gte", from_))
    if to is not None:
        conds.append(Cond("date", "lte", to))
    rows, more = await run_in_threadpool(
        lambda: PlatformTables(st.meta).query("daily_pnl", conds, sort=[("date", 1)], limit=MAX_DAYS)
    )
    if more:
        raise ParamError("from", f"more than {MAX_DAYS} days: narrow [from, to]")
    days = [DailyPnl.model_validate(r) for r in rows]
    return DailyPnlList(days=days, total=sum((d.daily_pnl for d in days), Decimal(0)))
