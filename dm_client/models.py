"""Typed results of the API's responses (pydantic; unknown keys kept, so newer servers do not break older clients)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Result(BaseModel):
    model_config = ConfigDict(extra="allow")


class RecordError(_Result):
    index: int
    reason: str


class InsertResult(_Result):
    inserted_count: int
    duplicates: int
    failed: int
    errors: list[RecordError] = []


class Pagination(_Result):
    limit: int
    offset: int
    returned: int
    has_more: bool
    next_offset: int | None = None


class QueryResult(_Result):
    data: list[dict[str, Any]]
    pagination: Pagination


class UpdateResult(_Result):
    matched_count: int
    modified_count: int
    upserted_count: int
    upserted_id: Any = None


class DeleteResult(_Result):
    deleted_count: int


class BatchResult(_Result):
    results: list[dict[str, Any]]


class Position(_Result):
    """Decimals arrive as exact strings; convert with ``decimal.Decimal`` where arithmetic needs them."""

    position_id: str
    symbol: str
    position_side: str
    status: str
    strategy_id: str | None = None
    entry_price: str | None = None
    quantity: str | None = None
    entry_time: str | None = None
    closed_at: str | None = None
    final_realized_pnl: str | None = None


class PositionList(_Result):
    count: int
    has_more: bool
    positions: list[Position]


class DailyPnl(_Result):
    date: str
    daily_pnl: str
    updated_at: str | None = None


class DailyPnlList(_Result):
    days: list[DailyPnl]
    total: str
