"""``/api/v1``: the trading services' contract (paths and field names as their clients send them).

Thin routes: resolution of the collection, auth, validation and store access live in
``api/contract`` (plain functions with their own tests). See README "Platform API".
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.contract import collections, service
from api.contract.datasets import SCOPE_READ, Dataset, resolve
from api.contract.filters import DEFAULT_MAX_ROWS, DEFAULT_PAGE, MAX_OFFSET, MAX_PAGE, MAX_ROWS_LIMIT, parse_json_param
from api.deps import AppState, Bearer, State, private_read, read_access, require_scope, state
from api.idempotency import Idempotent
from api.identity import caller
from api.json_body import BodyRoute
from api.models import ErrorResponse
from api.params import ParamError
from api.routes import collections as service_routes

router = APIRouter(route_class=BodyRoute, tags=["platform"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no token, or not a valid one"},
    403: {"model": ErrorResponse, "description": "the token lacks the dataset's scope, or writes are disabled"},
    404: {"model": ErrorResponse, "description": "unknown collection (the message lists the allowed ones)"},
    400: {"model": ErrorResponse, "description": "a malformed Idempotency-Key"},
    409: {"model": ErrorResponse, "description": "a conflict on a unique key, or the Idempotency-Key is in use"},
    413: {"model": ErrorResponse, "description": "over the batch size limit (named in the message)"},
    422: {
        "model": ErrorResponse,
        "description": "a filter, sort, field, value or limit the contract refuses; an Idempotency-Key reused "
        "with another payload",
    },
    503: {"model": ErrorResponse, "description": "a store is unavailable, or the metadata schema is not created"},
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InsertRequest(_Body):
    database: str = Field(max_length=32, examples=["mongodb"])
    collection: str = Field(max_length=64, examples=["klines_15m"])
    records: list[Any] = Field(description="records of the collection's schema (up to the batch size limit)")


class RecordError(BaseModel):
    index: int = Field(description="position of the record in `records`")
    reason: str


class InsertResponse(BaseModel):
    inserted_count: int = Field(description="new records stored")
    duplicates: int = Field(description="records already stored (same key): not stored again, not errors")
    failed: int = Field(description="records refused; each is listed in `errors`")
    errors: list[RecordError]


class QueryRequest(_Body):
    database: str = Field(max_length=32)
    collection: str = Field(max_length=64)
    filter: dict[str, Any] | None = None
    sort: dict[str, Any] | None = None
    limit: int | None = None
    offset: int | None = None
    fields: list[str] | None = None


class Pagination(BaseModel):
    limit: int
    offset: int
    returned: int
    has_more: bool
    next_offset: int | None


class QueryResponse(BaseModel):
    data: list[dict[str, Any]]
    pagination: Pagination


MaxRows = Field(
    default=None,
    ge=1,
    le=MAX_ROWS_LIMIT,
    description=f"the most rows this call may touch (default {DEFAULT_MAX_ROWS}); a larger match is refused, "
    "nothing changed",
)


class UpdateRequest(_Body):
    filter: dict[str, Any] = Field(description="must name its rows by a key (see the README's mutation rules)")
    data: dict[str, Any] = Field(description='the fields to set, or {"$set": {...}}')
    upsert: bool = False
    max_rows: int | None = MaxRows


class UpdateResponse(BaseModel):
    matched_count: int
    modified_count: int = Field(description="rows that match and now hold the values (an identical repeat counts)")
    changed_count: int = Field(default=0, description="rows whose stored values changed")
    updated_count: int = Field(default=0, description="rows that now hold the values, an inserted one included")
    upserted_count: int
    upserted_id: Any = Field(default=None, description="position_id or date of an inserted row")
    upserted: bool = Field(default=False, description="whether the upsert inserted a row")
    failed: int = Field(default=0, description="0: the update applied (refusals are 4xx answers)")


class DeleteRequest(_Body):
    filter: dict[str, Any] = Field(description="must name its rows by a key (see the README's mutation rules)")
    max_rows: int | None = MaxRows


class DeleteResponse(BaseModel):
    deleted_count: int


class BatchRequest(_Body):
    operations: list[Any] = Field(
        description='[{"type": "insert"|"update"|"delete", "data"?, "filter"?, "upsert"?, "max_rows"?}]'
    )


class BatchResponse(BaseModel):
    results: list[dict[str, Any]] = Field(description="per operation: index, type, ok, counts or error")


class ServiceInfo(BaseModel):
    service: str
    version: str
    docs: str
    openapi: str
    health: str
    api: str


def _token(creds: Any, x_api_token: str | None) -> str | None:
    return creds.credentials if creds is not None else x_api_token


def _writer(st: AppState, ds: Dataset, token: str | None, where: str = "path", request: Request | None = None) -> None:
    if ds.write_scope is None:  # no token can write it: say so, rather than name a scope nobody has
        raise ParamError("collection", f"{ds.name!r} is read-only through this API", status=405, where=where)
    require_scope(st, token, ds.write_scope, request)


async def _reader(request: Request, ds: Dataset) -> None:
    """Positions and daily PnL are the services' own records: ``read`` whenever tokens are configured."""
    await (private_read(request) if ds.kind == "sql" else read_access(request))


def _actor(st: AppState, request: Request, creds: Any, x_api_token: str | None) -> str:
    """The caller as a delete's audit row names it (never the token itself)."""
    claimed = caller(request).recorded_as if request.headers.get("x-petrosa-service") else None  # "(unverified)" marked
    return service.actor_name(_token(creds, x_api_token), claimed, st.settings.api_token)


def _stores(st: AppState, ds: Dataset) -> tuple[Any, Any]:
    return (st.mongo, None) if ds.database == "mongodb" else (None, st.meta)


XToken = Annotated[str | None, Header(include_in_schema=False)]


@router.get("/", response_model=ServiceInfo, tags=["health"])
def root(request: Request) -> ServiceInfo:
    """What this service is and where its documentation lives."""
    return ServiceInfo(
        service="market-data-manager",
        version=request.app.version,
        docs="/docs",
        openapi="/openapi.json",
        health="/health/readiness",
        api="/api/v1",
    )


@router.post("/api/v1/data/insert", response_model=InsertResponse, responses=ERRORS)
async def insert(
    body: InsertRequest, request: Request, creds: Bearer, idem: Idempotent, x_api_token: XToken = None
) -> Any:
    """Insert records; partial batches store the valid records and list the others in `errors`."""
    st = state(request)
    svc = collections.lookup(body.collection)
    if svc is not None:  # the services' own collections (api/contract/collections.py)
        return await service_routes.insert_records(request, svc, body.database, body.records, idem=idem, where="body")
    ds = resolve(body.collection, body.database, where="body")
    _writer(st, ds, _token(creds, x_api_token), where="body", request=request)
    mongo, meta = _stores(st, ds)
    inserts = st.inserts.insert_klines  # large kline batches: validated and stored in a worker process
    return await run_in_threadpool(
        lambda: service.insert(mongo, meta, ds, body.records, writer=idem, insert_klines=inserts)
    )


@router.post("/api/v1/data/query", response_model=QueryResponse, responses=ERRORS)
async def query(body: QueryRequest, st: State, request: Request) -> Any:
    """Query one page; `filter` is the declared subset (equality, $gt/$gte/$lt/$lte/$in/$ne on declared fields)."""
    svc = collections.lookup(body.collection)
    if svc is not None:
        await private_read(request)
        return await service_routes.query_records(
            st, svc, body.database, body.filter, body.sort, body.limit, body.offset, body.fields, where="body"
        )
    ds = resolve(body.collection, body.database, where="body")
    await _reader(request, ds)
    mongo, meta = _stores(st, ds)
    return await run_in_threadpool(
        lambda: service.query(
            mongo,
            meta,
            ds,
            filter_=body.filter,
            sort=body.sort,
            limit=body.limit,
            offset=body.offset,
            fields=body.fields,
            where="body",
        )
    )


@router.get(
    "/api/v1/{database}/{collection:path}",
    response_model=QueryResponse,
    responses=ERRORS,
)
async def find(
    database: str,
    collection: str,
    st: State,
    request: Request,
    filter: Annotated[str | None, Query(description='JSON object, e.g. {"symbol": "BTCUSDT"}', max_length=8000)] = None,
    sort: Annotated[str | None, Query(description='JSON object, e.g. {"close_time": -1}', max_length=400)] = None,
    limit: Annotated[int, Query(description=f"page size, 1..{MAX_PAGE}")] = DEFAULT_PAGE,
    offset: Annotated[int, Query(description=f"rows to skip, 0..{MAX_OFFSET}")] = 0,
    fields: Annotated[str | None, Query(description="comma-separated fields to return", max_length=2000)] = None,
) -> Any:
    """The same query as `POST /api/v1/data/query`, with `filter` and `sort` JSON-encoded in the query string."""
    ds = resolve(collection, database)
    await _reader(request, ds)
    flt, order = parse_json_param(filter, "filter"), parse_json_param(sort, "sort")
    mongo, meta = _stores(st, ds)
    return await run_in_threadpool(
        lambda: service.query(mongo, meta, ds, filter_=flt, sort=order, limit=limit, offset=offset, fields=fields)
    )


@router.put("/api/v1/{database}/{collection:path}", response_model=UpdateResponse, responses=ERRORS)
async def update(
    database: str,
    collection: str,
    body: UpdateRequest,
    request: Request,
    creds: Bearer,
    idem: Idempotent,
    x_api_token: XToken = None,
) -> Any:
    """Update every row matching `filter`; with `upsert`, insert filter equalities + data when none matches."""
    st = state(request)
    ds = resolve(collection, database)
    _writer(st, ds, _token(creds, x_api_token), request=request)
    plan = service.check_update(ds, body.filter, body.data, body.upsert, body.max_rows)
    return await run_in_threadpool(idem.write, lambda conn: service.apply_update(conn, st.meta, ds, plan, idem.seed))


@router.delete("/api/v1/{database}/{collection:path}", response_model=DeleteResponse, responses=ERRORS)
async def delete(
    database: str,
    collection: str,
    body: DeleteRequest,
    request: Request,
    creds: Bearer,
    idem: Idempotent,
    x_api_token: XToken = None,
) -> Any:
    """Delete the rows matching a non-empty `filter`."""
    st = state(request)
    ds = resolve(collection, database)
    _writer(st, ds, _token(creds, x_api_token), request=request)
    plan = service.check_delete(ds, body.filter, body.max_rows)
    who = _actor(st, request, creds, x_api_token)
    return await run_in_threadpool(idem.write, lambda conn: service.apply_delete(conn, st.meta, ds, plan, who))


@router.post("/api/v1/{database}/{collection}/batch", response_model=BatchResponse, responses=ERRORS)
async def batch(
    database: str,
    collection: str,
    body: BatchRequest,
    request: Request,
    creds: Bearer,
    idem: Idempotent,
    x_api_token: XToken = None,
) -> Any:
    """Run insert/update/delete operations in order, each on its own; one result per operation."""
    st = state(request)
    ds = resolve(collection, database)
    _writer(st, ds, _token(creds, x_api_token), request=request)
    mongo, meta = _stores(st, ds)
    who = _actor(st, request, creds, x_api_token)
    return await run_in_threadpool(lambda: service.batch(mongo, meta, ds, body.operations, actor=who, writer=idem))


__all__ = ["SCOPE_READ", "router"]
