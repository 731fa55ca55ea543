"""``/api/v1/strategies/{id}/lifecycle/*`` and ``/api/v1/lifecycle/*``: strategy states as transitions.

A transition lands only from the strategy's current state (409 naming the current state
otherwise); a retried transition answers the event it already stored (200, ``replayed``).
Reads need ``read`` whenever tokens are configured; transitions need ``lifecycle:write``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.contract import lifecycle as lc
from api.contract.auth import SCOPE_LIFECYCLE, Identity
from api.contract.config import ID_PATTERN
from api.deps import State, private_read
from api.idempotency import Idempotent
from api.identity import require
from api.json_body import BodyRoute
from api.models import ErrorResponse
from api.params import ParamError

router = APIRouter(route_class=BodyRoute, prefix="/api/v1", tags=["lifecycle"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse, "description": "from_state is not the strategy's current state (named)"},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
StrategyId = Annotated[str, Path(pattern=ID_PATTERN)]
ServiceQ = Annotated[str | None, Query(max_length=96, description="accepted as the TA bot sends it")]


class TransitionRequest(BaseModel):
    from_state: str | None = Field(default=None, description="the state the strategy is in now (null: none yet)")
    to_state: str = Field(pattern=lc.STATE_PATTERN)
    transitioned_by: str = Field(max_length=128)
    reason: str | None = None
    service: str | None = None
    metadata: dict[str, Any] | None = None
    transitioned_at: str | None = Field(default=None, description="ISO-8601; default: now")
    decision_id: str | None = None


class Event(BaseModel):
    event_id: str
    strategy_id: str
    seq: int
    from_state: str | None
    to_state: str
    transitioned_by: str
    reason: str | None
    service: str | None
    recorded_by: str = Field(description="the authenticated caller that stored it")
    metadata: dict[str, Any] | None
    decision_id: str | None
    transitioned_at: str | None
    replayed: bool | None = Field(default=None, description="true when a retry found this event already stored")


class StateView(BaseModel):
    strategy_id: str
    state: str | None
    transitioned_at: str | None
    event_id: str | None
    seq: int


class Events(BaseModel):
    strategy_id: str
    events: list[Event]
    count: int


class Reconstruction(BaseModel):
    decision_id: str
    events: list[Event]
    signals: list[dict[str, Any]]


async def _transition(
    st: Any, who: Identity, strategy_id: str, body: dict[str, Any], response: Response, idem: Any
) -> Any:
    def run() -> dict[str, Any]:
        event, _ = lc.transition(st.meta, strategy_id, body, who.recorded_as)
        return event

    event = await run_in_threadpool(idem.run, run, status=201)
    response.status_code = 200 if event.get("replayed") else 201
    return event


@router.post("/strategies/{strategy_id}/lifecycle/events", response_model=Event, status_code=201, responses=ERRORS)
async def create_event(
    st: State,
    response: Response,
    strategy_id: StrategyId,
    body: dict[str, Any],
    who: Annotated[Identity, Depends(require(SCOPE_LIFECYCLE))],
    idem: Idempotent,
    service: ServiceQ = None,
) -> Any:
    """Transition the strategy (201); a retry of a stored transition answers it again (200, ``replayed``)."""
    return await _transition(st, who, strategy_id, body, response, idem)


@router.post("/strategies/{strategy_id}/lifecycle/state", response_model=Event, status_code=201, responses=ERRORS)
async def set_state(
    st: State,
    response: Response,
    strategy_id: StrategyId,
    body: dict[str, Any],
    who: Annotated[Identity, Depends(require(SCOPE_LIFECYCLE))],
    idem: Idempotent,
) -> Any:
    """The same transition as ``POST …/events``, addressed to the state."""
    return await _transition(st, who, strategy_id, body, response, idem)


@router.get(
    "/strategies/{strategy_id}/lifecycle/state",
    response_model=StateView,
    responses=ERRORS,
    dependencies=[Depends(private_read)],
)
async def get_state(st: State, strategy_id: StrategyId) -> Any:
    """The strategy's current state (``null`` before its first transition)."""
    return await run_in_threadpool(lc.state_view, st.meta, strategy_id)


@router.get(
    "/strategies/{strategy_id}/lifecycle/events",
    response_model=Events,
    responses=ERRORS,
    dependencies=[Depends(private_read)],
)
async def get_events(
    st: State,
    strategy_id: StrategyId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    order: Literal["asc", "desc"] = "asc",
    service: ServiceQ = None,
) -> Any:
    """The strategy's transitions, oldest first (``order=desc``: newest first)."""
    return await run_in_threadpool(lc.events_view, st.meta, strategy_id, limit, order)


def _reconstruct(st: Any, decision_id: str) -> dict[str, Any]:
    from api.contract import collections as cols

    events = [lc.event_view(r) for r in lc.LifecycleStore(st.meta).by_decision(decision_id)]
    signals = cols.signals_for_decision(st.mongo, decision_id)
    if not events and not signals:
        raise ParamError("decision_id", f"nothing references decision {decision_id!r}", status=404)
    return {"decision_id": decision_id, "events": events, "signals": signals}


DecisionQ = Annotated[str, Query(min_length=1, max_length=128)]


@router.get(
    "/lifecycle/reconstruct",
    response_model=Reconstruction,
    responses=ERRORS,
    dependencies=[Depends(private_read)],
)
async def reconstruct(st: State, decision_id: DecisionQ) -> Any:
    """Everything stored here that names the decision: lifecycle events and signals (404 when nothing does)."""
    return await run_in_threadpool(_reconstruct, st, decision_id)


@router.get(
    "/lifecycle/{decision_id}",
    response_model=Reconstruction,
    responses=ERRORS,
    dependencies=[Depends(private_read)],
)
async def reconstruct_by_path(st: State, decision_id: Annotated[str, Path(min_length=1, max_length=128)]) -> Any:
    """The real data manager's spelling of ``/lifecycle/reconstruct?decision_id=``."""
    return await run_in_threadpool(_reconstruct, st, decision_id)
