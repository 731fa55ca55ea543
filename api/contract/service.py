"""What the ``/api/v1`` routes do, as plain functions over the stores (the routes stay thin).

Partial batches (``POST /api/v1/data/insert``): every record is validated on its own; the
valid ones are stored, the invalid ones are listed in ``errors`` with their index and the
reason, and counted in ``failed``. Records already stored (same natural key: kline
``symbol+interval+open_time``, ``position_id``, ``date``) are counted in ``duplicates``,
not stored twice and not errors. ``inserted_count`` counts only new records. A request
that is malformed as a whole (not a list, over the batch limit, unknown collection, wrong
database, missing token) is refused before anything is stored.

``POST /api/v1/{db}/{collection}/batch`` runs its operations in order, each on its own: each
result says ``ok`` or carries the ``error``. On SQL datasets each operation is a savepoint of
the request's one transaction (a failed operation leaves nothing behind, the others stand),
so the request commits once, with its idempotency answer.

Writes go through a :class:`~dm_resources.metadata.idempotency.WriteOnce` (the route's
``Idempotency-Key`` handling, ``api/idempotency.py``): SQL writes commit together with their
answer; klines (MongoDB) are idempotent by their ``_id`` and their answer is stored after.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from bson.decimal128 import Decimal128
from pymongo import ASCENDING
from sqlalchemy import Connection

from api.contract import klines
from api.contract.datasets import POSITION_SIDES, POSITION_STATUSES, Dataset, klines_interval
from api.contract.filters import (
    DEFAULT_MAX_ROWS,
    MAX_BATCH_OPERATIONS,
    MAX_BATCH_RECORDS,
    ValueProblem,
    check_max_rows,
    check_mutation_filter,
    check_page,
    check_record,
    check_update_data,
    epoch_ms,
    parse_fields,
    parse_filter,
    parse_sort,
)
from api.params import ParamError
from api.queries import explicit_sort
from dm_resources.candle_store import CandleStore
from dm_resources.contracts import FLOOR_MS, FUTURE_SLACK_MS, now_ms
from dm_resources.metadata.idempotency import WriteOnce
from dm_resources.metadata.platform import (
    MAX_AUDIT_FILTER_CHARS,
    TABLES,
    Actor,
    Cond,
    ConflictError,
    PlatformTables,
    TooManyRows,
)
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import COLLECTIONS, MongoStore

# Records per step of a kline insert: validated, read back and inserted together (see _insert_klines).
STORE_CHUNK = 500
# DECIMAL(38, 18): public field names are the column names (``metadata`` included).
MONEY_PRECISION, MONEY_SCALE = 38, 18

# --- rendering --------------------------------------------------------------------------------


def decimal_str(value: Decimal) -> str:
    """Exact, without the trailing zeros a DECIMAL(38, 18) column pads with."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text if text not in ("", "-") else "0"


def render(value: Any) -> Any:
    """JSON-safe: decimals as exact strings, datetimes ISO-8601 ``Z``, dates ``YYYY-MM-DD``."""
    if isinstance(value, Decimal):
        return decimal_str(value)
    if isinstance(value, Decimal128):
        return decimal_str(value.to_decimal())
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v) for v in value]
    return value


def _store_value(value: Any) -> Any:
    """A typed filter value as MongoDB stores it: times epoch ms, decimals Decimal128."""
    if isinstance(value, dt.datetime):
        return epoch_ms(value)
    if isinstance(value, Decimal):
        return Decimal128(value)
    if isinstance(value, tuple):
        return [_store_value(v) for v in value]
    return value


# --- positions/daily_pnl checks beyond types -------------------------------------------------------


def check_platform_values(ds: Dataset, values: dict[str, Any]) -> None:
    """What the SQL columns can hold (MySQL strict mode would refuse it as a server error) and the vocabularies."""
    table = TABLES[ds.store]
    for name, value in values.items():
        column_type = table.c[name].type
        length = getattr(column_type, "length", None)
        if isinstance(value, str) and length is not None and len(value) > length:
            raise ValueProblem(f"{name}: longer than {length} characters")
        if isinstance(value, Decimal):
            _, digits, exponent = value.as_tuple()
            significant = "".join(map(str, digits)).rstrip("0")
            if isinstance(exponent, int):  # trailing zeros are not digits: "1.50000000000000000000" fits
                exponent = exponent + len(digits) - len(significant) if significant else 0
            if isinstance(exponent, int) and exponent < -MONEY_SCALE:
                raise ValueProblem(f"{name}: more than {MONEY_SCALE} decimal places")
            if value != 0 and value.adjusted() >= MONEY_PRECISION - MONEY_SCALE:
                raise ValueProblem(f"{name}: more than {MONEY_PRECISION - MONEY_SCALE} integer digits")
    if ds.name != "positions":
        return
    if values.get("status") is not None and values["status"] not in POSITION_STATUSES:
        raise ValueProblem(f"status {values['status']!r} is not one of {', '.join(POSITION_STATUSES)}")
    if values.get("position_side") is not None and values["position_side"] not in POSITION_SIDES:
        raise ValueProblem(f"position_side {values['position_side']!r} is not one of {', '.join(POSITION_SIDES)}")


# --- inserts --------------------------------------------------------------------------------------


def _check_records(ds: Dataset, records: Any) -> list[Any]:
    if not isinstance(records, list):
        raise ParamError("records", "must be an array of records", where="body")
    if len(records) > MAX_BATCH_RECORDS:
        raise ParamError(
            "records",
            f"{len(records)} records exceed the batch size limit of {MAX_BATCH_RECORDS} per request; split the batch",
            status=413,
            where="body",
        )
    if not ds.writable:
        raise ParamError("collection", f"{ds.name!r} is read-only through this API", status=405, where="body")
    return records


def _insert_answer(inserted: int, duplicates: int, errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"inserted_count": inserted, "duplicates": duplicates, "failed": len(errors), "errors": errors}


def _kline_docs(
    ds: Dataset, records: Sequence[Any], first: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each record checked on its own: the documents of the valid ones, and the errors (``first`` + index)."""
    docs: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for i, rec in enumerate(records, first):
        try:
            docs.append(klines.to_document(ds, rec))
        except ValueProblem as exc:
            errors.append({"index": i, "reason": str(exc)})
    return docs, errors


def _insert_klines(mongo: MongoStore, ds: Dataset, records: list[Any]) -> dict[str, Any]:
    """Validate and store the records :data:`STORE_CHUNK` at a time (:func:`_store_new_klines`).

    Why in chunks, not the batch at once: every long step of a 5,000-record insert held the
    interpreter lock long enough to delay ``/health/liveness`` (issue 20, ``api/json_body.py``).
    The driver decodes a reply batch, and encodes an insert, in one C call; and the documents
    of a whole batch (5,000 dicts, 40,000 ``Decimal128``) are 45,000 objects that every full
    pass of the cyclic GC walks while it holds the lock. A chunk's documents die with the chunk.
    Same answer as one pass: a record repeated in a later chunk is found stored, a duplicate.
    """
    inserted = stored = 0
    errors: list[dict[str, Any]] = []
    for start in range(0, len(records), STORE_CHUNK):
        docs, bad = _kline_docs(ds, records[start : start + STORE_CHUNK], start)
        errors.extend(bad)
        new, duplicates = _store_new_klines(mongo, docs)
        inserted += new
        stored += duplicates
    return _insert_answer(inserted, stored, errors)


def _store_new_klines(mongo: MongoStore, docs: list[dict[str, Any]]) -> tuple[int, int]:
    """Insert what is not stored yet (inserted, duplicates): the stored ``_id``s of each symbol's span are read first.

    Extractors overlap their windows on purpose, so a batch is often mostly duplicates. Sent as
    inserts, 5,000 duplicates come back as 5,000 write errors that the driver decodes (each
    echoes its document): ~0.35 s of this process's CPU, holding the interpreter lock in long C
    calls. One ascending ``_id``-only range read per symbol costs a tenth of that.
    """
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in docs:
        by_key.setdefault((d["symbol"], d["interval"]), []).append(d)
    fresh: list[dict[str, Any]] = []
    stored = 0
    for (symbol, interval), group in by_key.items():
        times = [d["open_time"] for d in group]
        have = {
            r["_id"]
            for r in mongo.read_range(
                "klines",
                symbol,
                min(times),
                max(times) + 1,
                extra={"interval": interval},
                projection={"_id": 1},
                batch_size=STORE_CHUNK,
            )
        }
        stored += sum(1 for d in group if d["_id"] in have)
        fresh.extend(d for d in group if d["_id"] not in have)
    if not fresh:
        return 0, stored
    res = mongo.insert_idempotent("klines", fresh)
    return res.inserted, stored + res.duplicates


def _sql_values(ds: Dataset, records: list[Any]) -> tuple[list[dict[str, Any]], list[int], list[dict[str, Any]]]:
    """Each record checked on its own: the valid ones (with their indexes) and the errors."""
    valid: list[dict[str, Any]] = []
    where: list[int] = []
    errors: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        try:
            values = check_record(ds, rec)
            check_platform_values(ds, values)
            valid.append(values)
            where.append(i)
        except ValueProblem as exc:
            errors.append({"index": i, "reason": str(exc)})
    return valid, where, errors


def _insert_sql(
    conn: Connection,
    meta: MetadataStore,
    ds: Dataset,
    checked: tuple[list[dict[str, Any]], list[int], list[dict[str, Any]]],
    id_seed: str | None,
) -> dict[str, Any]:
    valid, where, errors = checked
    out = PlatformTables(meta).insert(ds.store, valid, conn=conn, id_seed=id_seed)
    errors = [*errors, *({"index": where[e["index"]], "reason": e["reason"]} for e in out.errors)]
    errors.sort(key=lambda e: e["index"])
    return _insert_answer(out.inserted, out.duplicates, errors)


def insert(
    mongo: MongoStore | None,
    meta: MetadataStore | None,
    ds: Dataset,
    records: Any,
    *,
    writer: WriteOnce | None = None,
    insert_klines: Callable[[MongoStore, Dataset, list[Any]], dict[str, Any]] = _insert_klines,
) -> dict[str, Any]:
    """Validate each record, store the valid ones (exactly once through ``writer``), list the others.

    ``writer`` carries the request's ``Idempotency-Key`` (``api/idempotency.py``); without one
    the insert still runs as one transaction with a server receipt (SQL datasets).
    ``insert_klines`` is :func:`_insert_klines` or the API's process pool for it (``api/offload.py``).
    """
    records = _check_records(ds, records)
    if ds.kind == "klines":
        assert mongo is not None
        if writer is None:
            return insert_klines(mongo, ds, records)
        return writer.run(lambda: insert_klines(mongo, ds, records))
    assert meta is not None
    checked = _sql_values(ds, records)
    writer = writer or WriteOnce(meta)
    seed = writer.seed
    return writer.write(lambda conn: _insert_sql(conn, meta, ds, checked, seed))


# --- reads ----------------------------------------------------------------------------------------


def query(
    mongo: MongoStore | None,
    meta: MetadataStore | None,
    ds: Dataset,
    *,
    filter_: Any,
    sort: Any,
    limit: int | None,
    offset: int | None,
    fields: Any,
    where: str = "query",
) -> dict[str, Any]:
    """Validate everything first (422 before any store is touched), then read one page."""
    conds = parse_filter(ds, filter_, where=where)
    order = parse_sort(ds, sort, where=where)
    names = parse_fields(ds, fields, where=where)
    limit, offset = check_page(limit, offset, where=where)
    if ds.kind == "sql":
        assert meta is not None
        rows, more = PlatformTables(meta).query(ds.store, conds, sort=order, limit=limit, offset=offset, fields=names)
        data = [render(r) for r in rows]
    else:
        assert mongo is not None
        docs, more = mongo_page(mongo, ds, conds, order, limit, offset)
        shaped = [klines.from_document(d) for d in docs] if ds.kind == "klines" else [render(d) for d in docs]
        data = [{k: r.get(k) for k in names} for r in shaped] if names else shaped
    return {
        "data": data,
        "pagination": {
            "limit": limit,
            "offset": offset,
            "returned": len(data),
            "has_more": more,
            "next_offset": offset + len(data) if more else None,
        },
    }


def _time_bounds(ds: Dataset, conds: Sequence[Cond]) -> tuple[int | None, int | None, list[Cond]]:
    """Conditions on the index's time field (or an exact alias of it) → ``[lo, hi)`` in ms; the rest."""
    lo: int | None = None
    hi: int | None = None
    rest: list[Cond] = []
    exact = {ds.time_field, *(a for a in ds.time_aliases if ds.fields[a].store_name == ds.time_field)}
    for c in conds:
        if c.field not in exact or c.op in ("ne", "in") or c.value is None:
            rest.append(c)
            continue
        v = epoch_ms(c.value)
        new_lo = {"gt": v + 1, "gte": v, "eq": v}.get(c.op)
        new_hi = {"lt": v, "lte": v + 1, "eq": v + 1}.get(c.op)
        if new_lo is not None:
            lo = new_lo if lo is None else max(lo, new_lo)
        if new_hi is not None:
            hi = new_hi if hi is None else min(hi, new_hi)
    return lo, hi, rest


_MONGO_OPS = {"ne": "$ne", "gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte", "in": "$in"}


def mongo_page(
    store: MongoStore, ds: Dataset, conds: Sequence[Cond], order: Sequence[tuple[str, int]], limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """One page of a MongoDB dataset by bounded ascending index reads only (see api/queries.py).

    A read must fix the index prefix by equality (``symbol``, and ``interval``/``kind`` where
    the index has them) and may sort only by time, either way: "newest first" gallops back
    over ascending windows, as ``read_latest`` does, instead of a descending sort.
    """
    eq = {c.field: c.value for c in conds if c.op == "eq" and c.field in ds.index_eq and c.value is not None}
    missing = [f for f in ds.index_eq if f not in eq]
    if missing:
        raise ParamError(
            "filter",
            f"reads of {ds.name!r} need equality on {', '.join(ds.index_eq)} (the index prefix); missing: "
            f"{', '.join(missing)}",
        )
    sortable = (ds.time_field, *ds.time_aliases)
    if len(order) > 1 or any(f not in sortable for f, _ in order):
        raise ParamError("sort", f"{ds.name!r} sorts by time only: one of {', '.join(sortable)}, 1 or -1")
    descending = bool(order) and order[0][1] < 0
    lo, hi, rest = _time_bounds(ds, [c for c in conds if not (c.op == "eq" and c.field in eq)])
    base: dict[str, Any] = {ds.fields[f].store_name: _store_value(v) for f, v in eq.items()}
    eq_names = set(base)
    base.update(dict(ds.extra_eq))
    fixed = dict(ds.extra_eq)
    for c in rest:
        name = ds.fields[c.field].store_name
        if name in fixed:  # e.g. interval on klines_15m: decided here, the fixed equality stays as it is
            if ds.kind == "klines" and name == "interval":  # "m15" is 15m, as inserts take it
                c = Cond(c.field, c.op, _interval_value(c.value))
            if not _holds(fixed[name], c):
                return [], False
            continue
        op = "$eq" if c.op == "eq" else _MONGO_OPS[c.op]
        current = base.get(name)
        if name in base and not isinstance(current, dict):  # an index equality: keep it beside the new one
            current = base[name] = {"$eq": current}
        base.setdefault(name, {})[op] = _store_value(c.value)
    if any(name not in fixed and name != ds.fields[ds.time_field].store_name for name in base if name not in eq_names):
        _check_scan_span(ds, lo, hi)
    want = offset + limit + 1
    rows = _gallop(store, ds, base, lo, hi, want, descending)
    page = rows[offset : offset + limit]
    return page, len(rows) > offset + limit


# A read that filters on fields outside the index examines every row of its time range: that range
# may hold at most this many rows at the dataset's typical spacing.
MAX_SCAN_ROWS = 100_000


def _check_scan_span(ds: Dataset, lo: int | None, hi: int | None) -> None:
    cap_ms = MAX_SCAN_ROWS * ds.step_ms
    span = (hi if hi is not None else now_ms() + FUTURE_SLACK_MS) - (lo if lo is not None else FLOOR_MS)
    if span > cap_ms:
        raise ParamError(
            "filter",
            f"a filter on fields outside the index of {ds.name!r} ({', '.join(ds.index_eq)}, {ds.time_field}) "
            f"examines every row of its time range: bound {ds.time_field} to at most {cap_ms / 86_400_000:g} days "
            f"({MAX_SCAN_ROWS} rows of this dataset), and page through longer ranges",
        )


def _interval_value(value: Any) -> Any:
    """A kline interval in either spelling (``m15``/``15m``) as stored (``15m``); others unchanged."""
    if isinstance(value, tuple):
        return tuple(_interval_value(v) for v in value)
    if isinstance(value, str):
        return klines_interval(f"klines_{value}") or value
    return value


def _holds(value: Any, c: Cond) -> bool:
    """Whether a fixed store value satisfies condition ``c`` (only eq/ne/in can name a fixed field usefully)."""
    if c.op == "eq":
        return bool(value == c.value)
    if c.op == "ne":
        return bool(value != c.value)
    if c.op == "in":
        return value in c.value
    return False


def _gallop(
    store: MongoStore, ds: Dataset, base: dict[str, Any], lo: int | None, hi: int | None, n: int, descending: bool
) -> list[dict[str, Any]]:
    floor = lo if lo is not None else FLOOR_MS
    now = now_ms()
    read = _candle_reader(store, base) if ds.store == "candles" else _collection_reader(store, ds, base)

    window = max(1, n * ds.step_ms)
    if not descending:
        top = hi if hi is not None else max(floor, now) + FUTURE_SLACK_MS
        out: list[dict[str, Any]] = []
        a = floor
        while len(out) < n and a < top:
            b = min(top, a + window)
            out.extend(read(a, b, n - len(out)))
            a, window = b, window * 4
        return out[:n]
    b = hi if hi is not None else now + max(ds.step_ms, 60_000)
    newest_first: list[dict[str, Any]] = []
    while len(newest_first) < n and b > floor:
        a = max(floor, b - window)
        newest_first.extend(reversed(read(a, b, 0)))
        b, window = a, window * 4
    return newest_first[:n]


Reader = Callable[[int, int, int], list[dict[str, Any]]]


def _collection_reader(store: MongoStore, ds: Dataset, base: dict[str, Any]) -> Reader:
    """Rows of a per-document collection with ``a <= time < b`` matching ``base``, ascending."""
    spec = COLLECTIONS[ds.store]
    coll = store.collection(ds.store)
    sort = [(k, ASCENDING) for k in spec.key] if explicit_sort(store) else None

    on_time = base.get(spec.time_field)  # $ne/$in on the time field: kept beside the window's range
    kept = dict(on_time) if isinstance(on_time, dict) else ({"$eq": on_time} if spec.time_field in base else {})

    def read(a: int, b: int, cap: int = 0) -> list[dict[str, Any]]:
        flt = {**base, spec.time_field: {**kept, "$gte": a, "$lt": b}}
        cur = coll.find(flt, {"_id": 0}, limit=cap, batch_size=max(101, min(cap, 10_000)))
        if sort:
            cur = cur.sort(sort)
        return list(cur)

    return read


_PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda v, x: v == x,
    "$ne": lambda v, x: v != x,
    "$gt": lambda v, x: v is not None and v > x,
    "$gte": lambda v, x: v is not None and v >= x,
    "$lt": lambda v, x: v is not None and v < x,
    "$lte": lambda v, x: v is not None and v <= x,
    "$in": lambda v, x: v in x,
}


def _matches(row: Mapping[str, Any], conds: Mapping[str, Any]) -> bool:
    """``conds`` (the declared subset, as built for MongoDB) evaluated on one decoded row."""
    for name, want in conds.items():
        ops = want if isinstance(want, dict) else {"$eq": want}
        if not all(_PY_OPS[op](row.get(name), x) for op, x in ops.items()):
            return False
    return True


def _candle_reader(store: MongoStore, base: dict[str, Any]) -> Reader:
    """Candles live in day buckets (``CandleStore``): read the window's buckets, filter the rows here."""
    symbol, interval = _plain(base["symbol"]), _plain(base["interval"])
    others = {k: v for k, v in base.items() if k not in ("symbol", "interval")}
    candles = CandleStore(store)

    def read(a: int, b: int, cap: int = 0) -> list[dict[str, Any]]:
        rows = [r for r in candles.read_range(symbol, interval, a, b) if _matches(r, others)]
        return rows[:cap] if cap else rows

    return read


def _plain(value: Any) -> Any:
    """The equality value of an index field (``{"$eq": v, ...}`` when other operators joined it)."""
    return value["$eq"] if isinstance(value, dict) else value


# --- updates and deletes ------------------------------------------------------------------------------


def _writable_sql(ds: Dataset, verb: str, where: str = "path") -> None:
    if ds.kind == "klines":
        raise ParamError("collection", f"{ds.name!r} is insert-only: {verb} is not supported", status=405, where=where)
    if ds.kind != "sql" or not ds.writable:
        raise ParamError("collection", f"{ds.name!r} is read-only through this API", status=405, where=where)


@dataclass(frozen=True)
class UpdatePlan:
    """A checked update: conditions, values to set, whether to insert when nothing matches, the row bound."""

    conds: list[Cond]
    values: dict[str, Any]
    upsert: bool
    max_rows: int = DEFAULT_MAX_ROWS


def actor_name(token: str | None, service: str | None, legacy_token: str | None) -> str:
    """Who a write came from, for its audit row: a service's name, ``DM_API_TOKEN``, or a token's digest prefix."""
    if service:
        return f"service:{service[:100]}"
    if not token:
        return "anonymous"
    if legacy_token and hmac.compare_digest(token.encode("utf-8", "replace"), legacy_token.encode()):
        return "DM_API_TOKEN"
    return "token:sha256:" + hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]


def _filter_text(filter_: Any) -> str:
    return orjson.dumps(filter_, default=str).decode()[:MAX_AUDIT_FILTER_CHARS]


def check_update(ds: Dataset, filter_: Any, data: Any, upsert: Any, max_rows: Any = None) -> UpdatePlan:
    """Everything about an update that can be refused before a store is touched."""
    _writable_sql(ds, "update")
    conds = parse_filter(ds, filter_, where="body")
    if not conds:
        raise ParamError("filter", "an update needs a non-empty filter (refusing to update every row)", where="body")
    check_mutation_filter(ds, conds, "update")
    bound = check_max_rows(max_rows)
    if not isinstance(upsert, bool):
        raise ParamError("upsert", "must be true or false", where="body")
    values = check_update_data(ds, data)
    nulled = [n for n, v in values.items() if v is None and not TABLES[ds.store].c[n].nullable]
    if nulled:  # else NOT NULL fails in the store and reads as a key conflict (409)
        raise ParamError("data", f"{', '.join(nulled)} cannot be null", where="body")
    try:
        check_platform_values(ds, values)
    except ValueProblem as exc:
        raise ParamError("data", str(exc), where="body") from None
    if upsert:  # the filter's equalities become column values of an inserted row
        try:
            check_platform_values(ds, {c.field: c.value for c in conds if c.op == "eq" and c.value is not None})
        except ValueProblem as exc:
            raise ParamError("filter", str(exc), where="body") from None
    return UpdatePlan(conds, values, upsert, bound)


def apply_update(
    conn: Connection, meta: MetadataStore, ds: Dataset, plan: UpdatePlan, id_seed: str | None = None
) -> dict[str, Any]:
    try:
        out = PlatformTables(meta).update(
            ds.store, plan.conds, plan.values, upsert=plan.upsert, conn=conn, id_seed=id_seed, max_rows=plan.max_rows
        )
    except TooManyRows as exc:
        raise ParamError("max_rows", str(exc), where="body") from None
    except ConflictError as exc:
        raise ParamError("data", str(exc), status=409, where="body") from None
    except ValueError as exc:  # an upsert that would insert a row without its required fields
        raise ParamError("filter", str(exc), where="body") from None
    # modified_count counts the rows that now hold the values, so a retried update (its first
    # answer lost) is a success to the trade engine, which reads only modified_count.
    return {
        "matched_count": out.matched,
        "modified_count": out.matched,
        "changed_count": out.modified,
        "updated_count": out.matched + out.upserted,
        "upserted_count": out.upserted,
        "upserted_id": render(out.upserted_id),
        "upserted": out.upserted > 0,
        "failed": 0,
    }


def update(
    meta: MetadataStore,
    ds: Dataset,
    filter_: Any,
    data: Any,
    upsert: Any,
    *,
    max_rows: Any = None,
    writer: WriteOnce | None = None,
) -> dict[str, Any]:
    plan = check_update(ds, filter_, data, upsert, max_rows)
    writer = writer or WriteOnce(meta)
    seed = writer.seed
    return writer.write(lambda conn: apply_update(conn, meta, ds, plan, seed))


@dataclass(frozen=True)
class DeletePlan:
    """A checked delete: conditions, the row bound, and the filter as sent (for the audit row)."""

    conds: list[Cond]
    max_rows: int
    filter_text: str


def check_delete(ds: Dataset, filter_: Any, max_rows: Any = None) -> DeletePlan:
    _writable_sql(ds, "delete")
    conds = parse_filter(ds, filter_, where="body")
    if not conds:
        raise ParamError("filter", "a delete needs a non-empty filter (refusing to delete every row)", where="body")
    check_mutation_filter(ds, conds, "delete")
    return DeletePlan(conds, check_max_rows(max_rows), _filter_text(filter_))


def apply_delete(
    conn: Connection, meta: MetadataStore, ds: Dataset, plan: DeletePlan, actor: str = "internal"
) -> dict[str, Any]:
    try:
        count = PlatformTables(meta).delete(
            ds.store, plan.conds, conn=conn, max_rows=plan.max_rows, actor=Actor(actor, plan.filter_text)
        )
    except TooManyRows as exc:
        raise ParamError("max_rows", str(exc), where="body") from None
    return {"deleted_count": count}


def delete(
    meta: MetadataStore,
    ds: Dataset,
    filter_: Any,
    *,
    max_rows: Any = None,
    actor: str = "internal",
    writer: WriteOnce | None = None,
) -> dict[str, Any]:
    plan = check_delete(ds, filter_, max_rows)
    writer = writer or WriteOnce(meta)
    return writer.write(lambda conn: apply_delete(conn, meta, ds, plan, actor))


def check_batch(ds: Dataset, operations: Any) -> list[Any]:
    """What refuses a batch as a whole: its shape, its size, and operations the dataset does not allow."""
    if not isinstance(operations, list) or not operations:
        raise ParamError("operations", "must be a non-empty array of operations", where="body")
    if len(operations) > MAX_BATCH_OPERATIONS:
        raise ParamError(
            "operations",
            f"{len(operations)} operations exceed the batch size limit of {MAX_BATCH_OPERATIONS} per request",
            status=413,
            where="body",
        )
    records = sum(
        len(op["data"]) if isinstance(op.get("data"), list) else 1
        for op in operations
        if isinstance(op, dict) and op.get("type") == "insert"
    )
    if records > MAX_BATCH_RECORDS:  # else 1,000 insert operations would carry 1,000 × the insert limit
        raise ParamError(
            "operations",
            f"{records} records in insert operations exceed the batch size limit of {MAX_BATCH_RECORDS} per request",
            status=413,
            where="body",
        )
    for op in operations:
        kind = op.get("type") if isinstance(op, dict) else None
        if kind in ("update", "delete"):
            _writable_sql(ds, kind)
    return operations


def _one_operation(
    conn: Connection | None,
    mongo: MongoStore | None,
    meta: MetadataStore | None,
    ds: Dataset,
    i: int,
    op: Any,
    id_seed: str | None,
    actor: str,
) -> dict[str, Any]:
    kind = op.get("type") if isinstance(op, dict) else None
    result: dict[str, Any] = {"index": i, "type": kind if isinstance(kind, str) else None, "ok": False}
    try:
        if kind == "insert":
            data = op.get("data")
            records = _check_records(ds, data if isinstance(data, list) else [data])
            if ds.kind == "klines":
                assert mongo is not None
                out = _insert_klines(mongo, ds, records)
            else:
                assert conn is not None and meta is not None
                seed = f"{id_seed}:{i}" if id_seed is not None else None
                out = _insert_sql(conn, meta, ds, _sql_values(ds, records), seed)
            result.update(out, ok=out["failed"] == 0)
        elif kind == "update":
            assert conn is not None and meta is not None
            plan = check_update(ds, op.get("filter"), op.get("data"), op.get("upsert", False), op.get("max_rows"))
            seed = f"{id_seed}:{i}" if id_seed is not None else None
            result.update(apply_update(conn, meta, ds, plan, seed), ok=True)
        elif kind == "delete":
            assert conn is not None and meta is not None
            plan_d = check_delete(ds, op.get("filter"), op.get("max_rows"))
            result.update(apply_delete(conn, meta, ds, plan_d, actor), ok=True)
        else:
            result["error"] = f"type must be insert, update or delete, got {str(kind)[:20]!r}"
    except ParamError as exc:
        result["error"] = f"{exc.param}: {exc.message}"
    return result


def batch(
    mongo: MongoStore | None,
    meta: MetadataStore | None,
    ds: Dataset,
    operations: Any,
    *,
    actor: str = "internal",
    writer: WriteOnce | None = None,
) -> dict[str, Any]:
    """Each operation on its own (a savepoint of one transaction for SQL datasets); one result per operation."""
    operations = check_batch(ds, operations)
    if ds.kind == "klines":

        def run_klines() -> dict[str, Any]:
            return {
                "results": [
                    _one_operation(None, mongo, meta, ds, i, op, None, actor) for i, op in enumerate(operations)
                ]
            }

        return writer.run(run_klines) if writer is not None else run_klines()
    assert meta is not None
    writer = writer or WriteOnce(meta)
    seed = writer.seed

    def run_sql(conn: Connection) -> dict[str, Any]:
        results = []
        for i, op in enumerate(operations):
            with conn.begin_nested() as sp:
                result = _one_operation(conn, mongo, meta, ds, i, op, seed, actor)
                if not result["ok"]:
                    sp.rollback()  # a failed operation leaves nothing behind; the others stand
            results.append(result)
        return {"results": results}

    return writer.write(run_sql)
