"""``/api/v1/trading/*``: the trade engine's positions and daily PnL, as plain functions over the metadata store.

The rows are the platform's one definition (``positions``, ``daily_pnl``); values are checked
by the same typed fields as the generic contract (``api/contract/datasets.py``). What the
engine reads (docs/PLATFORM_CONTRACT.md TE-02…TE-07) decides the shapes:

* **Create answers 409 when the ``position_id`` exists** (the engine reads it as "already
  exists"), so a retried POST stores nothing new. A create that would open a second position
  for the same symbol and side is a 422 naming the open one: it is not "already exists".
* **Lists page by cursor** (``next_cursor``), keyed on the row's insertion order, so rows added
  or closed while the engine pages are neither skipped nor repeated. A cursor is tied to its
  query (status, strategy, symbol) and expires after :data:`CURSOR_TTL_MS`; a malformed or
  stale one is a 422 that says which.
* **Writes are idempotent by their natural key**: PATCH sets the given fields; a close of a
  position already closed with the same values answers the close again (``replayed``); a
  daily-PnL PUT stores an absolute value.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from api.contract.datasets import PLATFORM, POSITION_STATUSES
from api.contract.filters import ValueProblem, check_record, coerce
from api.contract.service import check_platform_values, render
from api.params import ParamError, normalise_pair
from dm_resources.contracts import now_ms
from dm_resources.metadata.platform import Cond, ConflictError, PlatformTables, public_columns
from dm_resources.metadata.store import MetadataStore

POSITIONS = PLATFORM["positions"]
DAILY_PNL = PLATFORM["daily_pnl"]
MAX_LIST = 500
CURSOR_VERSION = 1
CURSOR_TTL_MS = 24 * 3_600_000
MAX_CURSOR = 512
MAX_ID = 64


# --- values --------------------------------------------------------------------------------------


def _field_of(message: str) -> str:
    """The field a ValueProblem's message names ("entry_price: …", "unknown field 'x'; …")."""
    if message.startswith("unknown field '"):
        name = message[len("unknown field '") :].split("'", 1)[0]
        return name if name.isidentifier() else "body"
    head, sep, _ = message.partition(":")
    return head if sep and head.isidentifier() else "body"


def position_values(record: Any, where: str = "body") -> dict[str, Any]:
    """A position's fields, typed and within what the columns hold; else a 422 naming the field."""
    try:
        values = check_record(POSITIONS, record)
        check_platform_values(POSITIONS, values)
    except ValueProblem as exc:
        raise ParamError(_field_of(str(exc)), str(exc), where=where) from None
    return values


def check_position_id(value: Any, where: str = "path") -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID or any(c.isspace() for c in value):
        raise ParamError("position_id", f"must be 1-{MAX_ID} characters without spaces", where=where)
    return value


def _store(meta: MetadataStore) -> PlatformTables:
    return PlatformTables(meta)


def _one(meta: MetadataStore, position_id: str) -> dict[str, Any] | None:
    rows, _ = _store(meta).query("positions", [Cond("position_id", "eq", position_id)], limit=1)
    return rows[0] if rows else None


def _open_of(meta: MetadataStore, symbol: str, side: str) -> dict[str, Any] | None:
    conds = [Cond("symbol", "eq", symbol), Cond("position_side", "eq", side), Cond("status", "eq", "open")]
    rows, _ = _store(meta).query("positions", conds, limit=1)
    return rows[0] if rows else None


_PLAIN = (str, int, float, bool)


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as JSON-ready values; most columns are null or plain, so only the rest go through ``render``."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k != "id":  # str(): the "metadata" key is a quoted_name, which orjson refuses as a key
            out[str(k)] = v if v is None or isinstance(v, _PLAIN) else render(v)
    return out


# --- cursors -------------------------------------------------------------------------------------


def _query_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(dict(parts), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def encode_cursor(after: int, query: Mapping[str, Any], issued_ms: int | None = None) -> str:
    raw = orjson.dumps({"v": CURSOR_VERSION, "a": after, "q": _query_key(query), "t": issued_ms or now_ms()})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, query: Mapping[str, Any]) -> int:
    """The row id a cursor continues after; 422 naming ``cursor`` when it is malformed or stale."""
    if len(cursor) > MAX_CURSOR:
        raise ParamError("cursor", f"malformed: longer than {MAX_CURSOR} characters")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise ParamError(
            "cursor", "malformed: not a cursor this API issued (send the next_cursor as it came)"
        ) from None
    if not isinstance(data, dict):
        raise ParamError("cursor", "malformed: not a cursor this API issued")
    after, issued = data.get("a"), data.get("t")
    if (
        isinstance(after, bool)
        or not isinstance(after, int)
        or after < 0
        or isinstance(issued, bool)
        or not isinstance(issued, int)
    ):
        raise ParamError("cursor", "malformed: not a cursor this API issued")
    if data.get("v") != CURSOR_VERSION:
        raise ParamError("cursor", "stale: issued by another version of this API; start again without a cursor")
    if data.get("q") != _query_key(query):
        raise ParamError(
            "cursor", "stale: it belongs to another query (status, strategy_id or symbol changed); start again"
        )
    if now_ms() - issued > CURSOR_TTL_MS:
        raise ParamError("cursor", "stale: older than 24 hours; start again without a cursor")
    return after


# --- positions -----------------------------------------------------------------------------------


def list_positions(
    meta: MetadataStore,
    *,
    status: str | None,
    strategy_id: str | None,
    symbol: str | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """One page of positions in insertion order, and the cursor of the next page (null on the last)."""
    conds: list[Cond] = []
    statuses: list[str] = []
    if status:
        statuses = [s.strip() for s in status.split(",") if s.strip()]
        bad = [s for s in statuses if s not in POSITION_STATUSES]
        if bad:
            raise ParamError("status", f"{bad[0][:20]!r} is not one of {', '.join(POSITION_STATUSES)}")
        conds.append(Cond("status", "in", tuple(statuses)) if len(statuses) > 1 else Cond("status", "eq", statuses[0]))
    sym = normalise_pair(symbol, "symbol") if symbol else None
    if sym:
        conds.append(Cond("symbol", "eq", sym))
    if strategy_id:
        conds.append(Cond("strategy_id", "eq", strategy_id))
    query = {"status": sorted(statuses), "symbol": sym, "strategy_id": strategy_id}
    if cursor:
        conds.append(Cond("id", "gt", decode_cursor(cursor, query)))
    names = ["id", *public_columns("positions")]
    rows, more = _store(meta).query("positions", conds, sort=[("id", 1)], limit=limit, fields=names)
    data = [view(r) for r in rows]
    return {
        "data": data,
        "count": len(data),
        "next_cursor": encode_cursor(rows[-1]["id"], query) if more and rows else None,
    }


def get_position(meta: MetadataStore, position_id: str) -> dict[str, Any]:
    row = _one(meta, check_position_id(position_id))
    if row is None:
        raise ParamError("position_id", f"no position {position_id!r}", status=404, where="path")
    return view(row)


def create_position(meta: MetadataStore, record: Any) -> dict[str, Any]:
    """Store a new position: 409 when its ``position_id`` exists (a retry), 422 when its slot is taken."""
    if not isinstance(record, Mapping):
        raise ParamError("body", "a position is a JSON object", where="body")
    check_position_id(record.get("position_id"), where="body")
    values = position_values(record)
    out = _store(meta).insert("positions", [values])
    if out.duplicates:
        raise ParamError(
            "position_id",
            f"position {values['position_id']!r} already exists; nothing stored",
            status=409,
            where="body",
        )
    if out.errors:
        reason = str(out.errors[0].get("reason", "not stored"))
        if "symbol" not in values or "position_side" not in values:  # e.g. a PUT of {} for a new id
            raise ParamError("body", reason, where="body")
        taken = _open_of(meta, values["symbol"], values["position_side"])
        if taken is None:
            raise ParamError("body", reason, where="body")
        which = f" ({taken['position_id']})"
        raise ParamError(
            "position_side",
            f"an open position{which} for {values['symbol']} {values['position_side']} exists: close it first",
            where="body",
        )
    return {"position_id": values["position_id"], "created": True}


def _reopens(current: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return current["status"] != "open" and values.get("status") == "open"


def _update(meta: MetadataStore, position_id: str, values: Mapping[str, Any]) -> None:
    try:
        _store(meta).update("positions", [Cond("position_id", "eq", position_id)], values, upsert=False)
    except ConflictError as exc:
        raise ParamError("position_side", str(exc), status=409, where="body") from None


def put_position(meta: MetadataStore, position_id: str, record: Any) -> tuple[dict[str, Any], bool]:
    """Store the position under ``position_id`` (created or replaced field by field); (row, created)."""
    check_position_id(position_id)
    if not isinstance(record, Mapping):
        raise ParamError("body", "a position is a JSON object", where="body")
    if record.get("position_id", position_id) != position_id:
        raise ParamError("position_id", "differs from the position_id in the path", where="body")
    values = position_values({**record, "position_id": position_id})
    current = _one(meta, position_id)
    if current is None:
        create_position(meta, values_to_record(values))
        return get_position(meta, position_id), True
    if _reopens(current, values):
        raise ParamError(
            "status", f"position {position_id!r} is {current['status']}: it cannot reopen", status=409, where="body"
        )
    _update(meta, position_id, values)
    return get_position(meta, position_id), False


def values_to_record(values: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values back into the JSON a record is (for re-validation by the insert path)."""
    return {k: render(v) for k, v in values.items()}


def patch_position(meta: MetadataStore, position_id: str, fields: Any) -> dict[str, Any]:
    """Set only the given fields; 404 for an unknown position, 409 for reopening a closed one."""
    check_position_id(position_id)
    if not isinstance(fields, Mapping) or not fields:
        raise ParamError("body", "send the fields to change as a non-empty JSON object", where="body")
    if fields.get("position_id", position_id) != position_id:
        raise ParamError("position_id", "differs from the position_id in the path", where="body")
    values = position_values({k: v for k, v in fields.items() if k != "position_id"})
    current = _one(meta, position_id)
    if current is None:
        raise ParamError("position_id", f"no position {position_id!r}", status=404, where="path")
    if _reopens(current, values):
        raise ParamError(
            "status", f"position {position_id!r} is {current['status']}: it cannot reopen", status=409, where="body"
        )
    _update(meta, position_id, values)
    return get_position(meta, position_id)


def _holds(row: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return all(row.get(k) == v for k, v in values.items())


def _close_values(fields: Any) -> dict[str, Any]:
    if fields is None:
        fields = {}
    if not isinstance(fields, Mapping):
        raise ParamError("body", "send the closing fields as a JSON object", where="body")
    if fields.get("status", "closed") != "closed":
        raise ParamError("status", "a close sets status closed", where="body")
    return position_values({k: v for k, v in fields.items() if k not in ("position_id", "status")})


def close_position(meta: MetadataStore, position_id: str, fields: Any) -> dict[str, Any]:
    """Close an open position with the given fields; a repeat with the same fields answers the close again."""
    check_position_id(position_id)
    values = _close_values(fields)
    current = _one(meta, position_id)
    if current is None:
        raise ParamError("position_id", f"no position {position_id!r}", status=404, where="path")
    if current["status"] != "open":
        if current["status"] == "closed" and _holds(current, values):
            return {"closed": True, "position_id": position_id, "replayed": True}
        raise ParamError(
            "position_id",
            f"position {position_id!r} is not open (status {current['status']})",
            status=409,
            where="path",
        )
    now = dt.datetime.now(dt.UTC)
    closing = {"closed_at": now, **values, "status": "closed", "updated_at": values.get("updated_at", now)}
    out = _store(meta).update(
        "positions", [Cond("position_id", "eq", position_id), Cond("status", "eq", "open")], closing, upsert=False
    )
    if not out.matched:  # closed by someone else between the read and the write
        return close_position(meta, position_id, fields)
    return {"closed": True, "position_id": position_id, "replayed": False}


def close_by_side(meta: MetadataStore, body: Any) -> dict[str, Any]:
    """Close the open position of ``symbol`` + ``position_side`` with ``update``'s fields."""
    if not isinstance(body, Mapping):
        raise ParamError("body", "a JSON object with symbol, position_side and update", where="body")
    unknown = [k for k in body if k not in ("symbol", "position_side", "update")]
    if unknown:
        raise ParamError(str(unknown[0])[:40], "unknown field; send symbol, position_side, update", where="body")
    for name in ("symbol", "position_side"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise ParamError(name, "is required", where="body")
    keys = position_values({"symbol": body["symbol"], "position_side": body["position_side"]})
    values = _close_values(body.get("update"))
    row = _open_of(meta, keys["symbol"], keys["position_side"])
    if row is not None:
        out = close_position(meta, row["position_id"], values_to_record(values))
        return {**out, "position_id": row["position_id"]}
    conds = [
        Cond("symbol", "eq", keys["symbol"]),
        Cond("position_side", "eq", keys["position_side"]),
        Cond("status", "eq", "closed"),
    ]
    rows, _ = _store(meta).query("positions", conds, sort=[("closed_at", -1)], limit=1)
    if rows and values and _holds(rows[0], values):
        return {"closed": True, "position_id": rows[0]["position_id"], "replayed": True}
    return {"closed": False, "position_id": None, "replayed": False}


# --- daily PnL ------------------------------------------------------------------------------------


def check_date(value: str) -> dt.date:
    try:
        day = coerce(DAILY_PNL.fields["date"], value)
    except ValueProblem as exc:
        raise ParamError("date", str(exc), where="path") from None
    if not isinstance(day, dt.date) or not 2000 <= day.year <= 2200:
        raise ParamError("date", "must be a day between 2000 and 2200", where="path")
    return day


def get_daily_pnl(meta: MetadataStore, date: str) -> dict[str, Any]:
    day = check_date(date)
    rows, _ = _store(meta).query("daily_pnl", [Cond("date", "eq", day)], limit=1)
    if not rows:
        raise ParamError("date", f"no daily PnL for {day.isoformat()}", status=404, where="path")
    return view(rows[0])


def put_daily_pnl(meta: MetadataStore, date: str, value: Any) -> dict[str, Any]:
    """Store the day's absolute PnL (a repeat stores the same value again: nothing changes)."""
    day = check_date(date)
    try:
        pnl = coerce(DAILY_PNL.fields["daily_pnl"], value)
        check_platform_values(DAILY_PNL, {"daily_pnl": pnl})
    except ValueProblem as exc:
        raise ParamError("daily_pnl", str(exc), where="body") from None
    if pnl is None:
        raise ParamError("daily_pnl", "is required", where="body")
    now = dt.datetime.now(dt.UTC)
    out = _store(meta).update(
        "daily_pnl", [Cond("date", "eq", day)], {"daily_pnl": pnl, "updated_at": now}, upsert=True
    )
    return {**get_daily_pnl(meta, day.isoformat()), "created": bool(out.upserted)}
