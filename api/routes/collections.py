"""The services' collections on the generic paths: ``GET|POST|PUT|DELETE /api/v1/{database}/{collection}``.

A path convertor routes only the service collections' names here (``api/contract/collections.py``);
every other collection falls through to the generic platform routes. ``POST`` is the
data-manager SDK's insert (``{"data": record | [records]}``, ``?validate=true``); for the
platform datasets (positions, klines, …) it is the same insert as ``POST /api/v1/data/insert``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor

from api.contract import collections as cols
from api.contract import service as platform_service
from api.contract.datasets import resolve
from api.contract.filters import DEFAULT_PAGE, MAX_OFFSET, MAX_PAGE, parse_json_param
from api.deps import State, private_read, state
from api.idempotency import Idempotency, Idempotent
from api.identity import authorize
from api.json_body import BodyRoute
from api.models import ErrorResponse
from api.params import ParamError


class ServiceCollectionConvertor(Convertor[str]):
    regex = cols.PATH_PATTERN

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("svc", ServiceCollectionConvertor())

router = APIRouter(route_class=BodyRoute, tags=["service collections"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    405: {"model": ErrorResponse, "description": "the collection does not allow this operation (its rights named)"},
    409: {"model": ErrorResponse, "description": "the filter matches more documents than max_rows; nothing changed"},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
PATH = "/api/v1/{database}/{collection:svc}"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InsertBody(_Body):
    data: dict[str, Any] | list[Any] = Field(description="one record or an array of records")
    schema_: str | None = Field(default=None, alias="schema", max_length=64, description="accepted; unused")
    validate_: bool = Field(default=False, alias="validate", description="check each record (signals)")


class UpdateBody(_Body):
    filter: dict[str, Any]
    data: dict[str, Any] = Field(description='the fields to set, or {"$set": {...}}')
    upsert: bool = False
    max_rows: int | None = Field(
        default=None, description=f"most documents it may touch (default 1, ≤ {cols.MAX_ROWS})"
    )
    schema_: str | None = Field(default=None, alias="schema", max_length=64)
    validate_: bool = Field(default=False, alias="validate")


class DeleteBody(_Body):
    filter: dict[str, Any]
    max_rows: int | None = Field(
        default=None, description=f"most documents it may delete (default 1, ≤ {cols.MAX_ROWS})"
    )


class InsertResult(BaseModel):
    inserted_count: int
    duplicates: int = Field(description="records already stored (a retry): not stored twice, not errors")
    failed: int
    errors: list[dict[str, Any]]
    inserted_ids: list[str] = Field(default_factory=list)
    inserted_id: str | None = None


class UpdateResult(BaseModel):
    matched_count: int
    modified_count: int = Field(description="rows that match and now hold the values (a repeat counts)")
    updated_count: int = Field(description="rows that now hold the values, inserted ones included")
    changed_count: int = Field(description="rows whose stored values changed")
    upserted_count: int
    upserted_id: Any = None
    upserted: bool
    failed: int


class DeleteResult(BaseModel):
    deleted_count: int


class QueryResult(BaseModel):
    data: list[dict[str, Any]]
    pagination: dict[str, Any]


def _collection(database: str, collection: str) -> cols.ServiceCollection:
    coll = cols.lookup(collection)
    assert coll is not None  # the convertor only routes service collections here
    cols.check_database(coll, database)
    return coll


def _stores(st: Any) -> cols.Stores:
    return cols.Stores(st.mongo, st.meta)


async def query_records(
    st: Any,
    coll: cols.ServiceCollection,
    database: str | None,
    filter_: Any,
    sort: Any,
    limit: Any,
    offset: Any,
    fields: Any,
    where: str = "query",
) -> Any:
    """A query of a service collection (the caller authorised the read)."""
    cols.check_database(coll, database, where=where)
    return await run_in_threadpool(
        lambda: cols.query(
            _stores(st), coll, filter_=filter_, sort=sort, limit=limit, offset=offset, fields=fields, where=where
        )
    )


async def insert_records(
    request: Request,
    coll: cols.ServiceCollection,
    database: str | None,
    records: Any,
    *,
    idem: Idempotency,
    validate: bool = False,
    where: str = "path",
) -> Any:
    """An insert into a service collection, authorised by the collection's scope."""
    st = state(request)
    cols.check_database(coll, database, where=where)
    who = authorize(request, coll.scope)
    return await run_in_threadpool(
        idem.run,
        lambda: cols.insert(_stores(st), coll, records, validate=validate, service=who.recorded_as, where=where),
    )


@router.get(
    PATH, include_in_schema=False, response_model=QueryResult, responses=ERRORS, dependencies=[Depends(private_read)]
)
async def find(
    database: str,
    collection: str,
    st: State,
    filter: Annotated[str | None, Query(max_length=8000, description="JSON object on declared fields")] = None,
    sort: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(description=f"1..{MAX_PAGE}")] = DEFAULT_PAGE,
    offset: Annotated[int, Query(description=f"0..{MAX_OFFSET}")] = 0,
    fields: Annotated[str | None, Query(max_length=2000)] = None,
) -> Any:
    """One page of a service collection; ``filter`` and ``sort`` use its declared fields."""
    coll = _collection(database, collection)
    flt, order = parse_json_param(filter, "filter"), parse_json_param(sort, "sort")
    return await query_records(st, coll, database, flt, order, limit, offset, fields)


@router.post(PATH, include_in_schema=False, response_model=InsertResult, responses=ERRORS)
async def insert(
    database: str,
    collection: str,
    body: InsertBody,
    request: Request,
    idem: Idempotent,
    validate: Annotated[bool, Query(description="check each record (signals)")] = False,
    schema: Annotated[str | None, Query(max_length=64, description="accepted; unused")] = None,
) -> Any:
    """Insert records; a bad record is listed in ``errors`` while the good ones are stored."""
    coll = _collection(database, collection)
    return await insert_records(request, coll, database, body.data, idem=idem, validate=validate or body.validate_)


@router.put(PATH, include_in_schema=False, response_model=UpdateResult, responses=ERRORS)
async def update(database: str, collection: str, body: UpdateBody, request: Request, idem: Idempotent) -> Any:
    """Set fields on the matches (at most ``max_rows``), or insert one with ``upsert``."""
    st = state(request)
    coll = _collection(database, collection)
    who = authorize(request, coll.scope)
    return await run_in_threadpool(
        idem.run,
        lambda: cols.update(
            _stores(st),
            coll,
            filter_=body.filter,
            data=body.data,
            upsert=body.upsert,
            max_rows=body.max_rows,
            service=who.recorded_as,
        ),
    )


@router.delete(PATH, include_in_schema=False, response_model=DeleteResult, responses=ERRORS)
async def delete(database: str, collection: str, body: DeleteBody, request: Request, idem: Idempotent) -> Any:
    """Delete the matches (at most ``max_rows``; boot probes by age only)."""
    st = state(request)
    coll = _collection(database, collection)
    who = authorize(request, coll.scope)
    return await run_in_threadpool(
        idem.run,
        lambda: cols.delete(_stores(st), coll, filter_=body.filter, max_rows=body.max_rows, service=who.recorded_as),
    )


# Included after the platform routes: "/api/v1/data/insert" must reach them first.
dataset_router = APIRouter(route_class=BodyRoute, tags=["platform"])


@dataset_router.post("/api/v1/{database}/{collection}", response_model=InsertResult, responses=ERRORS)
async def insert_dataset(
    database: str,
    collection: str,
    body: InsertBody,
    request: Request,
    idem: Idempotent,
    validate: Annotated[bool, Query()] = False,
    schema: Annotated[str | None, Query(max_length=64)] = None,
) -> Any:
    """Insert ``{"data": record | [records]}`` (the data-manager SDK's insert).

    The services' collections (signals, boot probes, trading configs, …) take it with the rights
    the gateway gives them (README "The platform's services"); the platform datasets (positions,
    daily PnL, klines) as ``POST /api/v1/data/insert`` does. The same path also serves GET, PUT
    and DELETE on the services' collections, with the shapes of the generic routes.
    """
    st = state(request)
    ds = resolve(collection, database)
    if ds.write_scope is None:
        raise ParamError("collection", f"{ds.name!r} is read-only through this API", status=405, where="path")
    authorize(request, ds.write_scope)
    records = body.data if isinstance(body.data, list) else [body.data]
    mongo, meta = (st.mongo, None) if ds.database == "mongodb" else (None, st.meta)
    out = await run_in_threadpool(lambda: platform_service.insert(mongo, meta, ds, records, writer=idem))
    return {**out, "inserted_ids": [], "inserted_id": None}
