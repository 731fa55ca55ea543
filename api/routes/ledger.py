"""``/api/v1/ledger/*``: the exchange's numbers the trade engine publishes, tie-outs, corrections.

Thin routes over ``api/contract/ledger.py``. Writes need ``ledger:write``; reads need ``read``
whenever tokens are configured. Snapshots and adjustments are insert-only; a supersede applies
only to a row that still equals ``expected_before`` (409 naming the field otherwise).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.contract import ledger
from api.contract.auth import SCOPE_LEDGER, Identity
from api.deps import State, private_read
from api.idempotency import Idempotent
from api.identity import require
from api.json_body import BodyRoute
from api.models import ErrorResponse
from api.params import ParamError
from dm_resources.metadata.ledger import LedgerStore

router = APIRouter(route_class=BodyRoute, prefix="/api/v1/ledger", tags=["ledger"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse, "description": "no such position"},
    409: {"model": ErrorResponse, "description": "the row drifted from expected_before, or an id holds other content"},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
Writer = Annotated[Identity, Depends(require(SCOPE_LEDGER))]


class DayStored(BaseModel):
    day: str
    revision: int
    created: bool = Field(description="false: this payload is the newest revision already (a retry)")
    restated: bool = Field(description="true: a final day was published again with other numbers")


class SnapshotStored(BaseModel):
    as_of_ms: int
    created: bool


class Superseded(BaseModel):
    id: str
    status: str
    adjustment_id: str
    row_hash: str
    replayed: bool


@router.put("/exchange-daily/{day}", response_model=DayStored, responses=ERRORS)
async def put_exchange_daily(day: dt.date, body: ledger.DailyLedger, st: State, who: Writer, idem: Idempotent) -> Any:
    """Store a revision of the exchange's income for the day (an unchanged payload stores nothing)."""
    return await run_in_threadpool(idem.run, lambda: ledger.put_day(st.meta, day, body, who.recorded_as))


@router.put("/exchange-positions/{as_of_ms}", response_model=SnapshotStored, responses=ERRORS)
async def put_exchange_positions(
    as_of_ms: Annotated[int, Path(ge=0, le=10**15)],
    body: ledger.PositionsSnapshot,
    st: State,
    who: Writer,
    idem: Idempotent,
) -> Any:
    """Store the exchange's open positions at ``as_of_ms`` (immutable: other rows for one time are a 409)."""
    return await run_in_threadpool(idem.run, lambda: ledger.put_positions(st.meta, as_of_ms, body, who.recorded_as))


@router.get("/tieout", responses=ERRORS, dependencies=[Depends(private_read)])
async def tieout(
    st: State,
    from_: Annotated[dt.date, Query(alias="from")],
    to: dt.date,
    tolerance: Annotated[Decimal | None, Query(ge=0, le=1000, description="USDT a day may differ and tie")] = None,
) -> Any:
    """Per day: the exchange's realised PnL + commission against our daily PnL (``tied``, ``break``, …)."""
    return await run_in_threadpool(ledger.tieout, st.meta, from_, to, tolerance)


@router.get("/positions-tieout", responses=ERRORS, dependencies=[Depends(private_read)])
async def positions_tieout(st: State) -> Any:
    """Open ledger rows against the exchange's newest snapshot; ``phantom_rows`` the exchange does not hold."""
    return await run_in_threadpool(LedgerStore(st.meta).positions_tieout)


@router.post("/adjustments", status_code=201, responses=ERRORS)
async def post_adjustment(
    body: ledger.AdjustmentWrite, st: State, who: Writer, response: Response, idem: Idempotent
) -> Any:
    """Append an adjustment to the hash chain (201); the same adjustment again answers it (200)."""
    row = await run_in_threadpool(
        idem.run, lambda: ledger.add_adjustment(st.meta, body, who.recorded_as)[0], status=201
    )
    response.status_code = 200 if row["replayed"] else 201
    return row


@router.get("/adjustments", responses=ERRORS, dependencies=[Depends(private_read)])
async def get_adjustments(
    st: State,
    from_: Annotated[dt.datetime | None, Query(alias="from")] = None,
    to: dt.datetime | None = None,
    target_table: Annotated[str | None, Query(max_length=64)] = None,
    target_key: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> Any:
    """Adjustments in chain order, with their hashes."""
    first = from_.replace(tzinfo=from_.tzinfo or dt.UTC) if from_ else None
    last = to.replace(tzinfo=to.tzinfo or dt.UTC) if to else None
    if first is not None and last is not None and first >= last:
        raise ParamError("from", "must be before to")
    rows = await run_in_threadpool(
        lambda: LedgerStore(st.meta).adjustments(
            first=first, last=last, target_table=target_table, target_key=target_key, limit=limit
        )
    )
    return [ledger.adjustment_view(r) for r in rows]


@router.post("/positions/supersede", response_model=Superseded, responses=ERRORS)
async def supersede(body: ledger.SupersedeRequest, st: State, who: Writer, idem: Idempotent) -> Any:
    """Mark a phantom position superseded, if it still equals ``expected_before``; 409 on drift."""
    return await run_in_threadpool(idem.run, lambda: ledger.supersede(st.meta, body, who.recorded_as)[0])
