"""Ledger requests: the exchange snapshots the trade engine publishes, adjustments, supersede (TE-10…TE-16).

Amounts are exact decimal strings (never floats): the models refuse anything else, and totals
are summed as decimals. Every check names the field it refuses.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from api.contract.datasets import PLATFORM
from api.contract.filters import ValueProblem, coerce
from api.params import ParamError
from dm_resources.metadata.ledger import (
    MONEY_COLUMNS,
    SUPERSEDE_MUTABLE,
    AdjustmentConflict,
    Drift,
    LedgerStore,
    NotFound,
    Supersede,
)
from dm_resources.metadata.store import MetadataStore

INCOME_TYPES = frozenset(
    {
        "REALIZED_PNL",
        "COMMISSION",
        "FUNDING_FEE",
        "TRANSFER",
        "COMMISSION_REBATE",
        "API_REBATE",
        "INSURANCE_CLEAR",
        "AUTO_EXCHANGE",
    }
)
MAX_ROWS = 5000
TOLERANCE = Decimal("0.01")  # USDT per day: below a cent, a day counts as tied
MAX_TIEOUT_DAYS = 366
_DECIMAL = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,18})?")  # fullmatch, bounded: linear
_KEY = re.compile(r"[A-Z_]{1,32}")


def check_decimal(value: str, name: str) -> str:
    if len(value) > 50 or _DECIMAL.fullmatch(value) is None:
        raise ValueError(f'{name}: {value[:40]!r} is not a decimal string such as "-12.5"')
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IncomeRow(_Strict):
    symbol: StrictStr = Field(default="", max_length=32)
    asset: StrictStr = Field(max_length=16)
    income_by_type: dict[StrictStr, StrictStr] = Field(max_length=32)

    @field_validator("income_by_type")
    @classmethod
    def _amounts(cls, value: dict[str, str]) -> dict[str, str]:
        for kind, amount in value.items():
            if _KEY.fullmatch(kind) is None:
                raise ValueError(f"income type {kind[:40]!r} is not an income type name")
            check_decimal(amount, kind)
        return value


class DailyLedger(_Strict):
    day: dt.date
    source_run_id: StrictStr = Field(min_length=1, max_length=128)
    is_final: StrictBool
    row_count: StrictInt = Field(ge=0, le=MAX_ROWS)
    first_income_time_ms: StrictInt | None = Field(default=None, ge=0, le=10**15)
    last_income_time_ms: StrictInt | None = Field(default=None, ge=0, le=10**15)
    rows: list[IncomeRow] = Field(max_length=MAX_ROWS)
    wallet_balance: StrictStr
    balance_as_of_ms: StrictInt = Field(ge=0, le=10**15)
    income_after_day_end: dict[StrictStr, StrictStr] = Field(default_factory=dict, max_length=32)

    @field_validator("wallet_balance")
    @classmethod
    def _balance(cls, value: str) -> str:
        return check_decimal(value, "wallet_balance")

    @field_validator("income_after_day_end")
    @classmethod
    def _after(cls, value: dict[str, str]) -> dict[str, str]:
        for kind, amount in value.items():
            check_decimal(amount, kind)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DailyLedger:
        if self.row_count != len(self.rows):
            raise ValueError(f"row_count ({self.row_count}) must equal the number of rows ({len(self.rows)})")
        if not 2000 <= self.day.year <= 2200:
            raise ValueError("day must lie between 2000 and 2200")
        return self


class PositionRow(_Strict):
    symbol: StrictStr = Field(min_length=1, max_length=32)
    position_side: Literal["LONG", "SHORT", "BOTH"]
    quantity: StrictStr
    entry_price: StrictStr
    mark_price: StrictStr
    unrealized_pnl: StrictStr

    @model_validator(mode="after")
    def _amounts(self) -> PositionRow:
        for name in ("quantity", "entry_price", "mark_price", "unrealized_pnl"):
            check_decimal(getattr(self, name), name)
        return self


class PositionsSnapshot(_Strict):
    as_of_ms: StrictInt = Field(ge=0, le=10**15)
    source_run_id: StrictStr = Field(min_length=1, max_length=128)
    rows: list[PositionRow] = Field(default_factory=list, max_length=MAX_ROWS)


ReasonCode = Literal["phantom_superseded", "status_correction", "annotation"]


class AdjustmentWrite(_Strict):
    adjustment_id: StrictStr = Field(min_length=1, max_length=64)
    applied_at: dt.datetime
    applied_by: StrictStr = Field(min_length=1, max_length=255)
    approved_by: StrictStr = Field(min_length=1, max_length=255)
    target_table: Literal["positions", "daily_pnl"]
    target_key: StrictStr = Field(min_length=1, max_length=255)
    before: dict[str, Any] = Field(max_length=64)
    after: dict[str, Any] = Field(max_length=64)
    reason_code: ReasonCode
    evidence_ref: StrictStr = Field(min_length=1, max_length=512)
    run_mode: Literal["dry_run", "apply"]
    dry_run_adjustment_id: StrictStr | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _rules(self) -> AdjustmentWrite:
        changed = {k for k in set(self.before) | set(self.after) if self.before.get(k) != self.after.get(k)}
        money = sorted(changed & MONEY_COLUMNS)
        if money:
            raise ValueError(f"after: money columns cannot be changed by an adjustment ({', '.join(money)})")
        if self.target_table == "positions":
            other = sorted(changed - SUPERSEDE_MUTABLE)
            if other:
                raise ValueError(f"after: only {', '.join(sorted(SUPERSEDE_MUTABLE))} may differ, not {other}")
            if self.reason_code == "phantom_superseded" and (
                self.after.get("status") != "superseded" or self.after.get("pnl_unknown") is not True
            ):
                raise ValueError("after: phantom_superseded sets status superseded and pnl_unknown true")
        if self.run_mode == "apply" and not self.dry_run_adjustment_id:
            raise ValueError("dry_run_adjustment_id: an apply names the dry run it carries out")
        if self.applied_at.tzinfo is None:
            self.applied_at = self.applied_at.replace(tzinfo=dt.UTC)
        return self


class SupersedeRequest(_Strict):
    id: StrictStr = Field(min_length=1, max_length=64, description="the position_id of the row to supersede")
    expected_before: dict[str, Any] = Field(max_length=64, description="fields the row must still hold")
    reason_code: ReasonCode
    evidence_ref: StrictStr = Field(min_length=1, max_length=512)
    applied_by: StrictStr = Field(min_length=1, max_length=255)
    approved_by: StrictStr = Field(min_length=1, max_length=255)
    dry_run_adjustment_id: StrictStr = Field(min_length=1, max_length=64)


# --- operations ------------------------------------------------------------------------------


def put_day(meta: MetadataStore, day: dt.date, body: DailyLedger, service: str) -> dict[str, Any]:
    if body.day != day:
        raise ParamError("day", f"the path says {day.isoformat()}, the body {body.day.isoformat()}", where="body")
    return LedgerStore(meta).put_day(body.model_dump(), service)


def put_positions(meta: MetadataStore, as_of_ms: int, body: PositionsSnapshot, service: str) -> dict[str, Any]:
    if body.as_of_ms != as_of_ms:
        raise ParamError("as_of_ms", f"the path says {as_of_ms}, the body {body.as_of_ms}", where="body")
    try:
        return LedgerStore(meta).put_positions(body.model_dump(), service)
    except AdjustmentConflict as exc:
        raise ParamError("as_of_ms", str(exc), status=409, where="path") from None


def tieout(meta: MetadataStore, first: dt.date, last: dt.date, tolerance: Decimal | None) -> dict[str, Any]:
    if first > last:
        raise ParamError("from", "must not be after to")
    if (last - first).days >= MAX_TIEOUT_DAYS:
        raise ParamError("to", f"at most {MAX_TIEOUT_DAYS} days per tie-out")
    return LedgerStore(meta).tieout(first, last, TOLERANCE if tolerance is None else tolerance)


def adjustment_view(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    applied = row["applied_at"]
    if isinstance(applied, dt.datetime):
        out["applied_at"] = applied.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return out


def add_adjustment(meta: MetadataStore, body: AdjustmentWrite, service: str) -> tuple[dict[str, Any], bool]:
    values = body.model_dump()
    try:
        row, created = LedgerStore(meta).add_adjustment(values, service)
    except NotFound as exc:
        raise ParamError("dry_run_adjustment_id", str(exc), where="body") from None
    except AdjustmentConflict as exc:
        raise ParamError("adjustment_id", str(exc), status=409, where="body") from None
    return {**adjustment_view(row), "replayed": not created}, created


def _typed_expected(expected: Mapping[str, Any]) -> dict[str, Any]:
    """``expected_before`` in the columns' types (``id`` is the position_id, as the engine sends it)."""
    fields = PLATFORM["positions"].fields
    out: dict[str, Any] = {}
    for name, value in expected.items():
        column = "position_id" if name == "id" else name
        spec = fields.get(column)
        if spec is None:
            raise ParamError(
                "expected_before", f"unknown field {str(name)[:40]!r}; it names position fields", where="body"
            )
        try:
            out[column] = coerce(spec, value)
        except ValueProblem as exc:
            raise ParamError("expected_before", f"{name}: {exc}", where="body") from None
        if isinstance(out[column], Decimal):
            try:
                out[column] = Decimal(out[column])
            except InvalidOperation:  # pragma: no cover - coerce already refused it
                raise ParamError("expected_before", f"{name}: not a decimal", where="body") from None
    return out


def supersede(meta: MetadataStore, body: SupersedeRequest, service: str) -> tuple[dict[str, Any], bool]:
    """Apply a supersede; a drifted row is a 409 naming the field, changing nothing."""
    expected = _typed_expected(body.expected_before)
    if expected.get("position_id", body.id) != body.id:
        raise ParamError("expected_before", "its id differs from the id of the request", where="body")
    request = Supersede(
        position_id=body.id,
        expected_before=expected,
        reason_code=body.reason_code,
        evidence_ref=body.evidence_ref,
        applied_by=body.applied_by,
        approved_by=body.approved_by,
        dry_run_adjustment_id=body.dry_run_adjustment_id,
        service=service,
    )
    try:
        row, created = LedgerStore(meta).supersede(request)
    except Drift as exc:
        raise ParamError(
            "expected_before",
            f"the row changed since the dry run ({exc}); nothing was applied",
            status=409,
            where="body",
        ) from None
    except NotFound as exc:
        status = 404 if str(exc).startswith("no position") else 422
        param = "id" if status == 404 else "dry_run_adjustment_id"
        raise ParamError(param, str(exc), status=status, where="body") from None
    return {
        "id": body.id,
        "status": "superseded",
        "adjustment_id": row["adjustment_id"],
        "row_hash": row["row_hash"],
        "replayed": not created,
    }, created
