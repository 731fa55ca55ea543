"""``/api/v1/config/*``: the application's and the strategies' configuration, versioned and audited.

Thin routes over ``api/contract/config_service.py``. Reads need scope ``read`` whenever tokens
are configured; writes need ``config:write``. Every write records who (``changed_by``), the
service that sent it, why, and the values before and after; a rollback is a new version.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.contract import config_service as svc
from api.contract.auth import SCOPE_CONFIG, Identity
from api.contract.config import APPLICATION, ID_PATTERN, MAX_REASON, MAX_WHO, check_parameters, strategy_scope
from api.deps import State, private_read
from api.idempotency import Idempotent
from api.identity import require
from api.json_body import BodyRoute
from api.models import ErrorResponse

router = APIRouter(route_class=BodyRoute, prefix="/api/v1/config", tags=["config"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no valid token (enforce mode)"},
    403: {"model": ErrorResponse, "description": "the caller lacks the scope"},
    404: {"model": ErrorResponse, "description": "no such configuration or version"},
    409: {"model": ErrorResponse, "description": "the version asked for cannot be restored"},
    422: {"model": ErrorResponse, "description": "a value the configuration refuses; the message names the parameter"},
    503: {"model": ErrorResponse, "description": "the metadata database is unavailable"},
}
Writer = Annotated[Identity, Depends(require(SCOPE_CONFIG))]
StrategyId = Annotated[str, Path(pattern=ID_PATTERN, description="e.g. rsi_extreme_reversal")]
SymbolQ = Annotated[str | None, Query(max_length=32, description="a symbol override, e.g. BTCUSDT")]
SideQ = Annotated[str | None, Query(max_length=8, description="with symbol: LONG, SHORT or BOTH")]
Limit = Annotated[int, Query(ge=1, le=1000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AppConfigRequest(_Body):
    enabled_strategies: list[str] = Field(max_length=200)
    symbols: list[str] = Field(max_length=200)
    candle_periods: list[str] = Field(max_length=32)
    min_confidence: float = 0.6
    max_confidence: float = 0.95
    max_positions: int = 10
    position_sizes: list[int] = Field(default_factory=lambda: [100, 200, 500, 1000], max_length=64)
    changed_by: str = Field(max_length=MAX_WHO, min_length=1)
    reason: str | None = Field(default=None, max_length=MAX_REASON)
    validate_only: bool = False


class StrategyConfigRequest(_Body):
    parameters: dict[str, Any] = Field(description="parameter name -> value; names must be declared (see README)")
    changed_by: str = Field(max_length=MAX_WHO, min_length=1)
    reason: str | None = Field(default=None, max_length=MAX_REASON)
    validate_only: bool = False
    declare_parameters: bool = Field(default=False, description="declare parameters the strategy does not have yet")


class RollbackRequest(_Body):
    target_version: int | None = Field(default=None, description="the version to restore; default: the previous one")
    rollback_id: str | None = Field(default=None, max_length=64, description="accepted for compatibility; unused")
    changed_by: str = Field(max_length=MAX_WHO, min_length=1)
    reason: str | None = Field(default=None, max_length=MAX_REASON)


class AppConfigView(BaseModel):
    enabled_strategies: list[str]
    symbols: list[str]
    candle_periods: list[str]
    min_confidence: float
    max_confidence: float
    max_positions: int
    position_sizes: list[int]
    version: int = Field(description="0 when nothing is stored (the defaults)")
    source: str = Field(description="database or default")
    created_at: str | None
    updated_at: str | None
    updated_by: str | None = None
    saved: bool | None = Field(default=None, description="on writes: whether a new version was stored")
    validated: bool | None = None
    rolled_back: bool | None = None
    rollback_to: int | None = None


class StrategyConfigView(BaseModel):
    strategy_id: str
    symbol: str | None
    side: str | None
    parameters: dict[str, Any] = Field(description="effective values: global, then symbol, then symbol+side")
    overrides: dict[str, Any] | None = Field(description="the values stored for this override scope")
    version: int = Field(description="version of this scope's values, 0 when none are stored")
    source: str = Field(description="global, override or none")
    is_override: bool
    created_at: str | None
    updated_at: str | None
    updated_by: str | None = None
    saved: bool | None = None
    validated: bool | None = None
    declared: list[str] | None = Field(default=None, description="parameters this write declared")
    rolled_back: bool | None = None
    rollback_to: int | None = None


class AuditRecord(BaseModel):
    version: int
    action: str = Field(description="CREATE, UPDATE, DELETE or ROLLBACK")
    strategy_id: str | None
    symbol: str | None
    side: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    changed_by: str
    service: str = Field(description="the service that sent the change (unverified ones are marked)")
    reason: str | None
    rollback_to: int | None
    changed_at: str | None


class StrategyList(BaseModel):
    strategy_ids: list[str]
    count: int


class StrategySymbols(BaseModel):
    strategy_id: str
    symbols: list[str]
    overrides: list[dict[str, Any]]


class Deleted(BaseModel):
    strategy_id: str
    symbol: str | None
    side: str | None
    deleted: bool
    already_deleted: bool
    version: int


@router.get("/application", response_model=AppConfigView, responses=ERRORS, dependencies=[Depends(private_read)])
async def get_application(st: State) -> Any:
    """The application configuration, or the defaults (version 0, source ``default``) when none is stored."""
    return await run_in_threadpool(svc.get_app, st.meta)


@router.post("/application", response_model=AppConfigView, responses=ERRORS)
async def set_application(body: AppConfigRequest, st: State, who: Writer, idem: Idempotent) -> Any:
    """Store a new version (an identical one stores nothing); ``validate_only`` checks without storing."""
    values = body.model_dump(exclude={"changed_by", "reason", "validate_only"})
    return await run_in_threadpool(
        idem.run,
        lambda: svc.set_app(
            st.meta,
            values,
            changed_by=body.changed_by,
            reason=body.reason,
            service=who.recorded_as,
            validate_only=body.validate_only,
        ),
    )


@router.get("/strategies", response_model=StrategyList, responses=ERRORS, dependencies=[Depends(private_read)])
async def list_strategies(st: State) -> Any:
    """Every strategy with a stored configuration."""
    return await run_in_threadpool(svc.list_strategies, st.meta)


@router.get(
    "/strategies/{strategy_id}",
    response_model=StrategyConfigView,
    responses=ERRORS,
    dependencies=[Depends(private_read)],
)
async def get_strategy(st: State, strategy_id: StrategyId, symbol: SymbolQ = None, side: SideQ = None) -> Any:
    """Effective parameters of a strategy (or of its symbol / symbol+side override); ``source: none`` if unset."""
    scope = strategy_scope(strategy_id, symbol, side)
    return await run_in_threadpool(svc.strategy_view, st.meta, scope)


@router.post("/strategies/{strategy_id}", response_model=StrategyConfigView, responses=ERRORS)
async def set_strategy(
    body: StrategyConfigRequest,
    st: State,
    who: Writer,
    idem: Idempotent,
    strategy_id: StrategyId,
    symbol: SymbolQ = None,
    side: SideQ = None,
) -> Any:
    """Store the scope's parameters as a new version; unknown parameters are refused by name."""
    scope = strategy_scope(strategy_id, symbol, side)
    check_parameters(body.parameters)

    def run() -> dict[str, Any]:
        view, _ = svc.set_strategy(
            st.meta,
            scope,
            body.parameters,
            changed_by=body.changed_by,
            reason=body.reason,
            service=who.recorded_as,
            validate_only=body.validate_only,
            declare=body.declare_parameters,
        )
        return view

    return await run_in_threadpool(idem.run, run)


@router.delete("/strategies/{strategy_id}", response_model=Deleted, responses=ERRORS)
async def delete_strategy(
    st: State,
    who: Writer,
    idem: Idempotent,
    strategy_id: StrategyId,
    symbol: SymbolQ = None,
    side: SideQ = None,
    changed_by: Annotated[str | None, Query(max_length=MAX_WHO)] = None,
    reason: Annotated[str | None, Query(max_length=MAX_REASON)] = None,
) -> Any:
    """Delete the scope's values (a DELETE version in the audit trail); a repeat answers ``already_deleted``."""
    scope = strategy_scope(strategy_id, symbol, side)
    return await run_in_threadpool(
        idem.run,
        lambda: svc.delete_strategy(
            st.meta, scope, changed_by=changed_by or who.name, reason=reason, service=who.recorded_as
        ),
    )


@router.get(
    "/strategies/{strategy_id}/symbols",
    response_model=StrategySymbols,
    responses=ERRORS,
    dependencies=[Depends(private_read)],
)
async def strategy_symbols(st: State, strategy_id: StrategyId) -> Any:
    """The symbols (and sides) with an override of this strategy."""
    return await run_in_threadpool(svc.list_symbols, st.meta, strategy_id)


@router.get(
    "/audit/application",
    response_model=list[AuditRecord],
    responses=ERRORS,
    dependencies=[Depends(private_read)],
)
async def audit_application(st: State, limit: Limit = 100) -> Any:
    """Changes of the application configuration, newest first."""
    return await run_in_threadpool(lambda: svc.audit(st.meta, APPLICATION, limit=limit))


@router.get(
    "/audit/strategies/{strategy_id}",
    response_model=list[AuditRecord],
    responses=ERRORS,
    dependencies=[Depends(private_read)],
)
async def audit_strategy(
    st: State, strategy_id: StrategyId, symbol: SymbolQ = None, side: SideQ = None, limit: Limit = 100
) -> Any:
    """Changes of a strategy's configuration, newest first: all its scopes, or one symbol's, or one side's."""
    scope = strategy_scope(strategy_id, symbol, side)
    return await run_in_threadpool(lambda: svc.audit(st.meta, scope, limit=limit, whole_strategy=not side))


@router.post("/rollback/application", response_model=AppConfigView, responses=ERRORS)
async def rollback_application(body: RollbackRequest, st: State, who: Writer, idem: Idempotent) -> Any:
    """Restore an earlier version as a new version (404 naming ``target_version`` when it does not exist)."""
    return await run_in_threadpool(
        idem.run,
        lambda: svc.rollback(
            st.meta,
            APPLICATION,
            body.target_version,
            changed_by=body.changed_by,
            reason=body.reason,
            service=who.recorded_as,
        ),
    )


@router.post("/rollback/strategies/{strategy_id}", response_model=StrategyConfigView, responses=ERRORS)
async def rollback_strategy(
    body: RollbackRequest,
    st: State,
    who: Writer,
    idem: Idempotent,
    strategy_id: StrategyId,
    symbol: SymbolQ = None,
    side: SideQ = None,
) -> Any:
    """Restore an earlier version of the scope as a new version."""
    scope = strategy_scope(strategy_id, symbol, side)
    return await run_in_threadpool(
        idem.run,
        lambda: svc.rollback(
            st.meta, scope, body.target_version, changed_by=body.changed_by, reason=body.reason, service=who.recorded_as
        ),
    )
