"""``/api/v1/trading/*``: the trade engine's typed position and daily-PnL routes.

Thin routes over ``api/contract/trading.py``. Reads need ``read`` whenever tokens are
configured; position writes need ``positions:write``, daily PnL ``pnl:write``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.contract import trading
from api.contract.datasets import SCOPE_PNL, SCOPE_POSITIONS
from api.contract.rows import Position
from api.deps import State, private_read
from api.idempotency import Idempotent
from api.identity import require
from api.json_body import BodyRoute
from api.models import ErrorResponse
from api.queries import dumps
from api.routes.common import json_response

router = APIRouter(route_class=BodyRoute, prefix="/api/v1/trading", tags=["trading"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse, "description": "no such position, or no daily PnL for the day"},
    409: {"model": ErrorResponse, "description": "the position exists already (create), or is not open (close)"},
    422: {"model": ErrorResponse, "description": "a value, cursor or field the contract refuses (named)"},
    503: {"model": ErrorResponse},
}
PositionId = Annotated[str, Path(min_length=1, max_length=trading.MAX_ID)]
Positions = Depends(require(SCOPE_POSITIONS))
Pnl = Depends(require(SCOPE_PNL))


class PositionPage(BaseModel):
    data: list[Position]
    count: int
    next_cursor: str | None = Field(description="pass it as `cursor` for the next page; null on the last page")


class Created(BaseModel):
    position_id: str
    created: bool


class Closed(BaseModel):
    closed: bool
    position_id: str | None
    replayed: bool = Field(description="true when a retry found the close already done")


class CloseBySide(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(max_length=32)
    position_side: str = Field(max_length=16)
    update: dict[str, Any] = Field(default_factory=dict, description="the closing fields (exit_price, pnl, …)")


class DailyPnlPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    daily_pnl: float | str = Field(description="the day's absolute PnL (a number or an exact decimal string)")
    updated_at: str | None = Field(default=None, max_length=40, description="accepted; the server stamps its own")


class DailyPnlView(BaseModel):
    date: str
    daily_pnl: str = Field(description="exact decimal string")
    created_at: str | None
    updated_at: str | None
    created: bool | None = None


@router.get("/positions", response_model=PositionPage, responses=ERRORS, dependencies=[Depends(private_read)])
async def list_positions(
    st: State,
    status: Annotated[str | None, Query(max_length=64, description="open, closed, superseded; comma-separated")] = None,
    strategy_id: Annotated[str | None, Query(max_length=128)] = None,
    symbol: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=trading.MAX_LIST)] = trading.MAX_LIST,
    cursor: Annotated[str | None, Query(max_length=trading.MAX_CURSOR)] = None,
) -> Any:
    """Positions in the order they were stored, a page at a time (follow ``next_cursor``)."""

    def page() -> bytes:  # rendered with orjson from dicts (the schema is the response_model; tests hold it)
        out = trading.list_positions(
            st.meta, status=status, strategy_id=strategy_id, symbol=symbol, limit=limit, cursor=cursor
        )
        return dumps(out)

    return json_response(await run_in_threadpool(page))


@router.post("/positions", response_model=Created, status_code=201, responses=ERRORS, dependencies=[Positions])
async def create_position(st: State, body: dict[str, Any], idem: Idempotent) -> Any:
    """Store a new position (201); an existing ``position_id`` answers 409 and stores nothing."""
    return await run_in_threadpool(idem.run, lambda: trading.create_position(st.meta, body), status=201)


@router.post("/positions/close-by-side", response_model=Closed, responses=ERRORS, dependencies=[Positions])
async def close_by_side(st: State, body: CloseBySide, idem: Idempotent) -> Any:
    """Close the open position of a symbol and side; ``closed: false`` when none is open."""
    return await run_in_threadpool(idem.run, lambda: trading.close_by_side(st.meta, body.model_dump()))


@router.get("/positions/{position_id}", response_model=Position, responses=ERRORS, dependencies=[Depends(private_read)])
async def get_position(st: State, position_id: PositionId) -> Any:
    """One position."""
    return await run_in_threadpool(trading.get_position, st.meta, position_id)


@router.put("/positions/{position_id}", response_model=Position, responses=ERRORS, dependencies=[Positions])
async def put_position(st: State, position_id: PositionId, body: dict[str, Any], idem: Idempotent) -> Any:
    """Store the position under this id: created, or its given fields replaced; a closed one never reopens."""
    return await run_in_threadpool(idem.run, lambda: trading.put_position(st.meta, position_id, body)[0])


@router.patch("/positions/{position_id}", response_model=Position, responses=ERRORS, dependencies=[Positions])
async def patch_position(st: State, position_id: PositionId, body: dict[str, Any], idem: Idempotent) -> Any:
    """Change only the given fields."""
    return await run_in_threadpool(idem.run, lambda: trading.patch_position(st.meta, position_id, body))


@router.post("/positions/{position_id}/close", response_model=Closed, responses=ERRORS, dependencies=[Positions])
async def close_position(
    st: State, position_id: PositionId, idem: Idempotent, body: dict[str, Any] | None = None
) -> Any:
    """Close an open position with the given fields; a retry answers the close again."""
    return await run_in_threadpool(idem.run, lambda: trading.close_position(st.meta, position_id, body))


@router.get(
    "/daily-pnl/{date_value}", response_model=DailyPnlView, responses=ERRORS, dependencies=[Depends(private_read)]
)
async def get_daily_pnl(st: State, date_value: Annotated[str, Path(max_length=10)]) -> Any:
    """The day's PnL; 404 when none is stored (the engine reads that as "no row")."""
    return await run_in_threadpool(trading.get_daily_pnl, st.meta, date_value)


@router.put("/daily-pnl/{date_value}", response_model=DailyPnlView, responses=ERRORS, dependencies=[Pnl])
async def put_daily_pnl(
    st: State, date_value: Annotated[str, Path(max_length=10)], body: DailyPnlPut, idem: Idempotent
) -> Any:
    """Store the day's absolute PnL."""
    return await run_in_threadpool(idem.run, lambda: trading.put_daily_pnl(st.meta, date_value, body.daily_pnl))
