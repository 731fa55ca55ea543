"""``/catalog/*``: datasets with schema, freshness and health; lineage from the asset graph."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import Field

from api.deps import AppState, State, read_access
from api.models import DatasetRecord, DatasetSchema, ErrorResponse, LineageResponse, _Model
from api.params import ParamError, normalise_pair, parse_time
from dm_resources.contracts import (
    CANDLE_INTERVALS,
    ORDERBOOK_SNAPSHOTS_PATH,
    analytics_asset_path,
    candle_asset_path,
    raw_asset_path,
)
from dm_resources.mongo import RAW_COLLECTIONS
from dm_resources.retention import retention_table

router = APIRouter(prefix="/catalog", tags=["catalog"], dependencies=[Depends(read_access)])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "token required (DM_API_PROTECT_READS)"},
    404: {"model": ErrorResponse, "description": "no such dataset"},
    422: {"model": ErrorResponse, "description": "a parameter is malformed; the message names it"},
}
ID_RE = re.compile(r"^[A-Za-z0-9_.:*/\-]{1,255}$")
DatasetId = Annotated[
    str, Path(description="dataset id kind:SYMBOL[:interval], e.g. candles:BTCUSDT:1m", max_length=255)
]


def _check_id(value: str, param: str = "dataset_id") -> str:
    if not ID_RE.match(value):
        raise ParamError(param, f"{value[:60]!r} is not a dataset id such as candles:BTCUSDT:1m", where="path")
    return value


def _dataset(st: AppState, dataset_id: str) -> DatasetRecord:
    rec = st.meta.get_dataset(_check_id(dataset_id))
    if rec is None:
        raise ParamError(
            "dataset_id", f"no dataset {dataset_id!r}; GET /catalog/datasets lists them", status=404, where="path"
        )
    return rec


@router.get("/datasets", response_model=list[DatasetRecord], responses=ERRORS)
def datasets(
    st: State,
    kind: Annotated[
        str | None, Query(description="candles, agg_trades, analytics.volatility, …", max_length=64)
    ] = None,
    pair: Annotated[str | None, Query(description="only this pair's datasets", max_length=64)] = None,
) -> list[DatasetRecord]:
    """Every cataloged dataset: collection, row count, time span, freshness and health score."""
    if kind is not None:
        _check_id(kind, "kind")
    sym = normalise_pair(pair) if pair is not None else None
    return st.meta.list_datasets(kind=kind, symbol=sym)


class RetentionPolicy(_Model):
    collection: str
    retention_days: int | None = Field(description="days kept; null when kept forever")
    keep_forever: bool
    deletes: str | None
    never_deletes: str | None = Field(description="what the retention job keeps whatever its age")
    minimum_reason: str
    env: str = Field(description="the variable that sets it")


@router.get("/retention", response_model=list[RetentionPolicy], responses=ERRORS)
def retention(st: State) -> list[RetentionPolicy]:
    """Each high-volume collection's retention (``DM_RETENTION_*_DAYS``) and what it never deletes."""
    return [RetentionPolicy(**row) for row in retention_table(st.settings)]


@router.get("/datasets/{dataset_id}", response_model=DatasetRecord, responses=ERRORS)
def dataset(st: State, dataset_id: DatasetId) -> DatasetRecord:
    return _dataset(st, dataset_id)


@router.get("/schemas/{dataset_id}", response_model=DatasetSchema, responses=ERRORS)
def schema(st: State, dataset_id: DatasetId) -> DatasetSchema:
    """The dataset's fields with their BSON types and meaning."""
    rec = _dataset(st, dataset_id)
    return DatasetSchema(id=rec.id, collection=rec.collection, fields=rec.schema_ or [])


def lineage_node(rec: DatasetRecord) -> str:
    """The asset key (as the lineage table stores it) that produces a dataset."""
    if rec.kind == "candles" and rec.interval in CANDLE_INTERVALS:
        return "/".join(candle_asset_path(rec.interval))
    if rec.kind.startswith("analytics."):
        return "/".join(analytics_asset_path(rec.kind.removeprefix("analytics.")))
    if rec.kind in RAW_COLLECTIONS:
        return "/".join(raw_asset_path(rec.kind))
    if rec.kind in ("depth_snapshots", "orderbook_snapshots"):
        return "/".join(ORDERBOOK_SNAPSHOTS_PATH)
    return rec.kind


class ArchiveFileView(_Model):
    """One Binance archive file as last fetched: where a candles dataset's history came from, or why not."""

    file: str
    url: str
    period: str = Field(description="monthly or daily")
    period_start: int = Field(description="epoch ms UTC")
    period_end: int = Field(description="epoch ms UTC, exclusive")
    status: str = Field(description="accepted, refused or missing (404)")
    sha256: str | None
    size: int | None
    rows: int | None
    reason: str | None = Field(description="why a file was refused")
    fetched_at: dt.datetime
    fetches: int


class ProvenanceResponse(_Model):
    id: str
    symbol: str
    files: list[ArchiveFileView]


@router.get("/provenance/{dataset_id}", response_model=ProvenanceResponse, responses=ERRORS)
def provenance(
    st: State,
    dataset_id: DatasetId,
    start: Annotated[str | None, Query(description="ISO-8601 or epoch ms", max_length=40)] = None,
    end: Annotated[str | None, Query(description="ISO-8601 or epoch ms; exclusive", max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ProvenanceResponse:
    """The Binance archive files a candles dataset's minutes came from (name, sha256, when fetched) or were refused.

    Candles of every interval share their 1m history, so ``candles:BTCUSDT:1h`` lists the same
    files as ``candles:BTCUSDT:1m``.
    """
    from dm_resources.metadata.archive import archive_files

    parts = _check_id(dataset_id).split(":")
    if len(parts) < 2 or parts[0] != "candles":
        raise ParamError(
            "dataset_id", "archive provenance is kept for candles datasets (candles:SYMBOL[:interval])", status=404
        )
    symbol = normalise_pair(parts[1], "dataset_id")
    lo, hi = parse_time(start, "start"), parse_time(end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise ParamError("start", "start must be before end; the range is [start, end)")
    rows = archive_files(st.meta, symbol, lo, hi, limit=limit)
    files = [
        ArchiveFileView(
            file=r.name,
            url=r.url,
            period=r.period,
            period_start=r.period_start,
            period_end=r.period_end,
            status=r.status,
            sha256=r.sha256,
            size=r.size,
            rows=r.rows,
            reason=r.reason,
            fetched_at=r.fetched_at,
            fetches=r.fetches,
        )
        for r in rows
    ]
    return ProvenanceResponse(id=dataset_id, symbol=symbol, files=files)


@router.get("/lineage/{dataset_id:path}", response_model=LineageResponse, responses=ERRORS)
def lineage(
    st: State,
    dataset_id: DatasetId,
    depth: Annotated[int, Query(ge=1, le=20, description="hops to follow up and down")] = 1,
) -> LineageResponse:
    """Upstream and downstream edges of a dataset (or of an asset key such as ``candles/candles_1m``)."""
    _check_id(dataset_id)
    rec = st.meta.get_dataset(dataset_id)
    node = lineage_node(rec) if rec is not None else dataset_id
    view = st.meta.lineage_for(node, depth)
    if rec is None and not view.upstream and not view.downstream:
        raise ParamError("dataset_id", f"no dataset or asset {dataset_id!r} in the catalog", status=404, where="path")
    return LineageResponse(id=dataset_id, node=node, lineage=view)
