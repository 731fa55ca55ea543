"""The services' collections behind the generic ``/api/v1`` routes, with the rights the gateway gives them.

| collection | rights | lives in |
|---|---|---|
| ``signals`` (``?validate=true`` checks each) | read, insert | MongoDB |
| ``characterization_artifacts``, ``config_rate_limits`` | read, insert | MongoDB |
| ``tradeengine_boot_probes`` | read, insert, delete of probes older than an hour | MongoDB |
| ``strategy_lifecycle_events`` | read, insert (a transition, as the typed route) | metadata DB |
| ``heartbeat_state`` | read, upsert | MongoDB |
| ``trading_configs_*``, ``leverage_status`` | read, insert, update, upsert, delete | MongoDB |
| ``strategy_configs_global``, ``_symbol`` | read, insert, update, upsert, delete | the config versions (SQL) |
| ``strategy_config_audit`` | read, insert (append-only) | the config versions + the services' notes |

Nothing else becomes writable. Why it looks like this:

* **Declared fields only in filters** (typed per collection, ``FIELDS``); documents may carry
  other fields, bounded (size, depth, key names: no ``$`` and no ``.``, which MongoDB would
  read as operators or paths).
* **Retry-safe inserts without a key**: a document's ``_id`` is the client's ``_id`` where it
  sends one (the boot probe does), else a hash of its content, so a retried POST stores it once.
* **Upserts** take the filter's equalities as the document's key (``_id`` derived from them),
  so racing upserts of one key end with one document.
* **Guarded mass mutations**: an update or delete needs a filter (only the one-document
  ``trading_configs_global`` may use ``{}``), a negation alone is refused, and it may touch at
  most ``max_rows`` documents (default 1): a larger match is refused and changes nothing.
* **The strategy configs are one store**: ``strategy_configs_*`` read and write the same
  versioned, audited rows as ``/api/v1/config``, so every change made here is in the audit trail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from bson import ObjectId
from bson.decimal128 import Decimal128

from api.contract import config_service
from api.contract import lifecycle as lc
from api.contract.auth import (
    SCOPE_ARTIFACTS,
    SCOPE_BOOT_PROBES,
    SCOPE_CONFIG,
    SCOPE_HEARTBEAT,
    SCOPE_LEVERAGE,
    SCOPE_LIFECYCLE,
    SCOPE_RATE_LIMITS,
    SCOPE_SIGNALS,
    SCOPE_TRADING_CONFIGS,
)
from api.contract.config import Scope, check_parameters, strategy_scope
from api.contract.datasets import Dataset, FieldSpec
from api.contract.filters import ValueProblem, check_page, coerce, parse_fields, parse_filter, parse_sort
from api.params import ParamError
from dm_resources.metadata.lifecycle import LifecycleStore
from dm_resources.metadata.platform import Cond
from dm_resources.metadata.store import MetadataStore
from dm_resources.metadata.strategy_config import ConfigStore
from dm_resources.mongo import MongoStore
from dm_resources.service_collections import ServiceDocs, TooManyMatches

Backing = Literal["mongo", "config_global", "config_symbol", "config_audit", "lifecycle"]
Op = Literal["read", "insert", "update", "upsert", "delete"]
DATABASE = "mongodb"
DATABASES = ("mongodb",)  # the name clients use for every service collection; it never picks the store
MAX_DOC_BYTES = 65_536
MAX_DEPTH = 8
MAX_KEY = 128
MAX_RECORDS = 1000
MAX_ROWS = 1000
BOOT_PROBE_MIN_AGE = dt.timedelta(hours=1)
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}")  # fullmatch, bounded: linear (and never $ or .)
_TRADING_CONFIGS = re.compile(r"trading_configs_[a-z][a-z0-9_]{0,47}")


def _f(name: str, type_: Any) -> FieldSpec:
    return FieldSpec(name, type_)


def _fields(*specs: FieldSpec) -> dict[str, FieldSpec]:
    return {s.name: s for s in specs}


@dataclass(frozen=True)
class ServiceCollection:
    name: str
    ops: frozenset[str]
    scope: str
    backing: Backing
    fields: dict[str, FieldSpec]
    description: str
    id_field: str | None = None  # a field the client keys documents by (else a content hash)
    datetimes: tuple[str, ...] = ()  # stored as dates, so that time filters compare times
    singleton: bool = False  # one document: update/delete may use an empty filter
    _ds: Dataset | None = field(default=None, compare=False)

    @property
    def dataset(self) -> Dataset:
        """The filter machinery's view (``api/contract/filters.py`` reads ``name`` and ``fields``)."""
        return Dataset(self.name, "mongodb", "market", self.fields, self.description)


_ID = _f("_id", "str")
_SYM = _f("symbol", "symbol")
_SID = _f("strategy_id", "str")
_READ_INSERT = frozenset({"read", "insert"})
_FULL = frozenset({"read", "insert", "update", "upsert", "delete"})

_FIXED: dict[str, ServiceCollection] = {
    c.name: c
    for c in (
        ServiceCollection(
            "signals",
            _READ_INSERT,
            SCOPE_SIGNALS,
            "mongo",
            _fields(
                _ID,
                _SYM,
                _SID,
                _f("strategy", "str"),
                _f("period", "str"),
                _f("signal", "str"),
                _f("action", "str"),
                _f("confidence", "float"),
                _f("timestamp", "datetime"),
                _f("decision_id", "str"),
            ),
            "Trading signals the strategies emit (TA bot, realtime strategies)",
            datetimes=("timestamp",),
        ),
        ServiceCollection(
            "characterization_artifacts",
            _READ_INSERT,
            SCOPE_ARTIFACTS,
            "mongo",
            _fields(
                _ID, _SID, _f("strategy_revision_id", "str"), _f("artifact_id", "str"), _f("created_at", "datetime")
            ),
            "Strategy characterization artifacts",
            id_field="artifact_id",
            datetimes=("created_at",),
        ),
        ServiceCollection(
            "tradeengine_boot_probes",
            frozenset({"read", "insert", "delete"}),
            SCOPE_BOOT_PROBES,
            "mongo",
            _fields(_ID, _f("probe_id", "str"), _f("created_at", "datetime")),
            "The trade engine's write-then-read probe at boot; probes older than an hour may be deleted",
            id_field="_id",
            datetimes=("created_at",),
        ),
        ServiceCollection(
            "config_rate_limits",
            _READ_INSERT,
            SCOPE_RATE_LIMITS,
            "mongo",
            _fields(_ID, _f("key", "str"), _f("service", "str"), _SID, _f("timestamp", "datetime")),
            "Configuration-change rate-limit records",
            datetimes=("timestamp",),
        ),
        ServiceCollection(
            "heartbeat_state",
            frozenset({"read", "upsert"}),
            SCOPE_HEARTBEAT,
            "mongo",
            _fields(
                _ID, _f("service", "str"), _f("instance", "str"), _f("status", "str"), _f("updated_at", "datetime")
            ),
            "Last heartbeat per service (upserted by key)",
            datetimes=("updated_at",),
        ),
        ServiceCollection(
            "leverage_status",
            _FULL,
            SCOPE_LEVERAGE,
            "mongo",
            _fields(_ID, _SYM, _f("updated_at", "datetime")),
            "Configured and actual leverage per symbol (trade engine)",
            datetimes=("updated_at",),
        ),
        ServiceCollection(
            "strategy_configs_global",
            _FULL,
            SCOPE_CONFIG,
            "config_global",
            _fields(_SID, _f("version", "int")),
            "Global strategy configurations (the versioned store of /api/v1/config)",
        ),
        ServiceCollection(
            "strategy_configs_symbol",
            _FULL,
            SCOPE_CONFIG,
            "config_symbol",
            _fields(_SID, _SYM, _f("version", "int")),
            "Per-symbol strategy overrides (the versioned store of /api/v1/config)",
        ),
        ServiceCollection(
            "strategy_config_audit",
            _READ_INSERT,
            SCOPE_CONFIG,
            "config_audit",
            _fields(_SID, _SYM, _f("action", "str"), _f("changed_at", "datetime")),
            "Strategy configuration changes: the server's audit trail plus the services' own notes (append-only)",
            datetimes=("changed_at",),
        ),
        ServiceCollection(
            "strategy_lifecycle_events",
            _READ_INSERT,
            SCOPE_LIFECYCLE,
            "lifecycle",
            _fields(_SID),
            "Strategy lifecycle transitions (as POST /api/v1/strategies/{id}/lifecycle/events)",
        ),
    )
}


def _trading_configs(name: str) -> ServiceCollection:
    return ServiceCollection(
        name,
        _FULL,
        SCOPE_TRADING_CONFIGS,
        "mongo",
        _fields(_ID, _SYM, _f("side", "str"), _f("timestamp", "datetime"), _f("updated_at", "datetime")),
        "Trade engine trading configuration (global, per symbol, per symbol and side, audit)",
        datetimes=("timestamp", "updated_at"),
        singleton=name == "trading_configs_global",
    )


def lookup(name: str) -> ServiceCollection | None:
    """The service collection ``name`` names, or None (then it is not one of these)."""
    if name in _FIXED:
        return _FIXED[name]
    if _TRADING_CONFIGS.fullmatch(name):
        return _trading_configs(name)
    return None


NAMES = (*_FIXED, "trading_configs_{name}")
# Path segments that may name a service collection (a Starlette convertor routes only these here).
PATH_PATTERN = "|".join([*(re.escape(n) for n in _FIXED), r"trading_configs_[a-z][a-z0-9_]{0,47}"])


def check_database(coll: ServiceCollection, database: str | None, where: str = "path") -> None:
    if database is not None and database not in DATABASES:
        raise ParamError(
            "database", f"{coll.name!r} is addressed as database {DATABASE!r}, not {database[:32]!r}", where=where
        )


def check_op(coll: ServiceCollection, op: str, where: str = "path") -> None:
    if op not in coll.ops:
        rights = ", ".join(o for o in ("read", "insert", "update", "upsert", "delete") if o in coll.ops)
        why = " (the audit trail is append-only)" if coll.backing == "config_audit" else ""
        raise ParamError("collection", f"{coll.name!r} allows {rights}; not {op}{why}", status=405, where=where)


# --- documents -------------------------------------------------------------------------------


def _check_tree(value: Any, path: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ValueProblem(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            bad = not isinstance(key, str) or _KEY.fullmatch(key) is None
            if bad and not (depth == 0 and key == "_id"):
                shown = str(key)[:40]
                raise ValueProblem(
                    f"{path}{'.' if path else ''}{shown!r}: a key is 1-128 of A-Z a-z 0-9 _ - (no $ and no .)"
                )
            _check_tree(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_tree(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueProblem(f"{path}: NaN and Infinity are not JSON numbers")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63 - 1:
        raise ValueProblem(f"{path}: does not fit a 64-bit integer")


def check_document(coll: ServiceCollection, record: Any) -> dict[str, Any]:
    """A record as stored: bounded, safe keys, declared fields typed (dates as dates)."""
    if not isinstance(record, dict):
        raise ValueProblem(f"a record is a JSON object, got {type(record).__name__}")
    size = len(orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)) if record else 2
    if size > MAX_DOC_BYTES:
        raise ValueProblem(f"larger than {MAX_DOC_BYTES // 1024} KB")
    _check_tree(record, "")
    out = dict(record)
    if "_id" in out and (not isinstance(out["_id"], str) or not 0 < len(out["_id"]) <= MAX_KEY):
        raise ValueProblem("_id: must be a string of 1-128 characters")
    for name, spec in coll.fields.items():
        if name in out and out[name] is not None and name != "_id":
            try:
                out[name] = coerce(spec, out[name])
            except ValueProblem as exc:
                raise ValueProblem(f"{name}: {exc}") from None
    for name in coll.datetimes:  # stored naive UTC in milliseconds: what MongoDB keeps, returns and compares
        if isinstance(out.get(name), dt.datetime):
            when = out[name].astimezone(dt.UTC).replace(tzinfo=None)
            out[name] = when.replace(microsecond=when.microsecond // 1000 * 1000)
    return out


def content_id(doc: Mapping[str, Any]) -> str:
    """A deterministic id for a document without a key of its own: the hash of its content."""
    raw = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_NAIVE_UTC, default=str)
    return hashlib.sha256(raw).hexdigest()[:32]


def _doc_id(coll: ServiceCollection, doc: Mapping[str, Any]) -> str:
    if "_id" in doc:
        return str(doc["_id"])
    if coll.id_field and isinstance(doc.get(coll.id_field), str) and doc[coll.id_field]:
        return f"{coll.id_field}:{doc[coll.id_field]}"[:MAX_KEY]
    return content_id(doc)


SIGNAL_DIRECTIONS = frozenset({"BUY", "SELL", "HOLD", "LONG", "SHORT", "CLOSE"})
DIRECTION_FIELDS = ("signal", "action", "signal_type", "side", "direction")


def check_signal(doc: Mapping[str, Any]) -> None:
    """``?validate=true``: what a consumer of a signal needs to act on it."""
    if not isinstance(doc.get("symbol"), str):
        raise ValueProblem("symbol: required, e.g. BTCUSDT")
    if not any(isinstance(doc.get(k), str) and doc[k] for k in ("strategy_id", "strategy")):
        raise ValueProblem("strategy_id: required (or strategy)")
    direction = next((doc[k] for k in DIRECTION_FIELDS if doc.get(k) is not None), None)
    if not isinstance(direction, str) or direction.upper() not in SIGNAL_DIRECTIONS:
        raise ValueProblem(
            f"signal: one of {', '.join(DIRECTION_FIELDS)} must be one of {', '.join(sorted(SIGNAL_DIRECTIONS))}"
        )
    confidence = doc.get("confidence")
    if confidence is not None and (
        isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 <= confidence <= 1
    ):
        raise ValueProblem("confidence: must be a number between 0 and 1")
    for name in ("price", "entry_price", "current_price", "stop_loss", "take_profit"):
        value = doc.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise ValueProblem(f"{name}: must be a positive number")


# --- rendering -----------------------------------------------------------------------------


def render(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        aware = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return aware.isoformat().replace("+00:00", "Z")
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Decimal128):
        return str(value.to_decimal())
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v) for v in value]
    return value


# --- filters -----------------------------------------------------------------------------------

_MONGO = {"ne": "$ne", "gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte", "in": "$in"}


def _store_value(coll: ServiceCollection, name: str, value: Any) -> Any:
    if isinstance(value, tuple):
        return [_store_value(coll, name, v) for v in value]
    if isinstance(value, dt.datetime) and name in coll.datetimes:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    if isinstance(value, dt.datetime):  # declared datetime without a date column: compare as sent (ISO)
        return value.astimezone(dt.UTC).isoformat()
    return value


def to_mongo(coll: ServiceCollection, conds: list[Cond]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in conds:
        value = _store_value(coll, c.field, c.value)
        if c.op == "eq":
            if c.field in out and isinstance(out[c.field], dict):
                out[c.field]["$eq"] = value
            else:
                out[c.field] = value
        else:
            current = out.get(c.field)
            if current is not None and not isinstance(current, dict):
                current = out[c.field] = {"$eq": current}
            out.setdefault(c.field, {})[_MONGO[c.op]] = value
    return out


def _equalities(conds: list[Cond]) -> dict[str, Any]:
    return {c.field: c.value for c in conds if c.op == "eq" and c.value is not None}


def _values(conds: list[Cond], name: str) -> list[Any] | None:
    """The values a filter allows for ``name`` (eq or $in), or None when it does not fix the field."""
    for c in conds:
        if c.field == name and c.op == "eq" and c.value is not None:
            return [c.value]
        if c.field == name and c.op == "in":
            return list(c.value)
    return None


def _a(op: str) -> str:
    return f"an {op}" if op[0] in "aeiou" else f"a {op}"


def guard_mutation(coll: ServiceCollection, conds: list[Cond], op: str, max_rows: Any, where: str = "body") -> int:
    """The ``max_rows`` a mutation may touch, after refusing filters that do not narrow it."""
    if isinstance(max_rows, bool) or (max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1)):
        raise ParamError("max_rows", f"must be a positive integer up to {MAX_ROWS}", where=where)
    if max_rows is not None and max_rows > MAX_ROWS:
        raise ParamError("max_rows", f"{max_rows} is over the limit of {MAX_ROWS} per request", where=where)
    if not conds and not coll.singleton:
        raise ParamError(
            "filter",
            f"an {op} needs a filter that names what it touches (refusing to {op} every document)",
            where=where,
        )
    if conds and all(c.op == "ne" for c in conds):
        why = f"a negation alone does not narrow {_a(op)}: add an equality or a range"
        raise ParamError("filter", why, where=where)
    if coll.name == "tradeengine_boot_probes" and op == "delete":
        cutoff = next((c.value for c in conds if c.field == "created_at" and c.op in ("lt", "lte")), None)
        newest = dt.datetime.now(dt.UTC) - BOOT_PROBE_MIN_AGE
        if not isinstance(cutoff, dt.datetime) or cutoff > newest:
            raise ParamError(
                "filter",
                "boot probes are deleted by age only: created_at {$lt: <a time at least an hour ago>}",
                where=where,
            )
        return max_rows or MAX_ROWS
    return max_rows or 1


# --- operations ------------------------------------------------------------------------------------


@dataclass
class Stores:
    mongo: MongoStore | None
    meta: MetadataStore | None

    @property
    def docs(self) -> ServiceDocs:
        assert self.mongo is not None
        return ServiceDocs(self.mongo)

    @property
    def configs(self) -> MetadataStore:
        assert self.meta is not None
        return self.meta


def insert(
    stores: Stores, coll: ServiceCollection, records: Any, *, validate: bool, service: str, where: str = "body"
) -> dict[str, Any]:
    """Insert records, each on its own: bad ones are listed in ``errors``, stored ones are not stored twice."""
    check_op(coll, "insert", where=where)
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise ParamError("data", "must be a record or an array of records", where=where)
    if len(records) > MAX_RECORDS:
        raise ParamError(
            "data", f"{len(records)} records exceed the limit of {MAX_RECORDS} per request", status=413, where=where
        )
    if coll.backing in ("config_global", "config_symbol"):
        return _insert_configs(stores, coll, records, service)
    if coll.backing == "lifecycle":
        return _insert_transitions(stores, records, service)
    errors: list[dict[str, Any]] = []
    docs: list[dict[str, Any]] = []
    ids: list[str] = []
    keyed = False
    for i, rec in enumerate(records):
        try:
            doc = check_document(coll, rec)
            if validate and coll.name == "signals":
                check_signal(doc)
        except ValueProblem as exc:
            errors.append({"index": i, "reason": str(exc)})
            continue
        keyed = keyed or "_id" in doc or bool(coll.id_field and doc.get(coll.id_field))
        doc["_id"] = _doc_id(coll, doc)
        docs.append(doc)
        ids.append(doc["_id"])
    name = coll.name if coll.backing == "mongo" else "strategy_config_audit"
    res = stores.docs.insert(name, docs)
    # A duplicate that equals what was sent is this very record, already stored (a retry whose
    # answer was lost): it counts as stored, which is what the services check (inserted_count >
    # 0, or == records sent). A content-hashed duplicate equals it by construction; one under a
    # client's own key is compared, and a different document under that key is an error.
    stored = res.inserted + res.duplicates
    if keyed and res.duplicates:
        sent = {d["_id"]: d for d in docs}
        found, _ = stores.docs.find(name, {"_id": {"$in": list(sent)}}, limit=len(sent))
        for doc in found:
            if render(doc) != render(sent[doc["_id"]]):
                stored -= 1
                index = next(
                    (i for i, rec in enumerate(records) if isinstance(rec, dict) and _doc_id(coll, rec) == doc["_id"]),
                    0,
                )
                errors.append({"index": index, "reason": f"_id {doc['_id']!r} is stored with other content"})
    return {
        "inserted_count": stored,
        "duplicates": res.duplicates,
        "failed": len(errors),
        "errors": sorted(errors, key=lambda e: e["index"]),
        "inserted_ids": ids,
        "inserted_id": ids[0] if ids else None,
    }


def query(
    stores: Stores,
    coll: ServiceCollection,
    *,
    filter_: Any,
    sort: Any,
    limit: Any,
    offset: Any,
    fields: Any,
    where: str = "query",
) -> dict[str, Any]:
    check_op(coll, "read", where=where)
    ds = coll.dataset
    conds = parse_filter(ds, filter_, where=where)
    order = parse_sort(ds, sort, where=where)
    names = parse_fields(ds, fields, where=where)
    page, skip = check_page(limit, offset, where=where)
    if coll.backing == "mongo":
        rows, more = stores.docs.find(
            coll.name, to_mongo(coll, conds), sort=order, limit=page, offset=skip, projection=names
        )
        data = [render(r) for r in rows]
    elif coll.backing in ("config_global", "config_symbol"):
        data, more = _query_configs(stores, coll, conds, page, skip)
    elif coll.backing == "config_audit":
        data, more = _query_audit(stores, coll, conds, page, skip)
    else:
        ids = _values(conds, "strategy_id")
        events, more = LifecycleStore(stores.configs).query(strategy_ids=ids, limit=page, offset=skip)
        data = [lc.event_view(e) for e in events]
    if names and coll.backing != "mongo":
        data = [{k: r.get(k) for k in names} for r in data]
    return {
        "data": data,
        "pagination": {
            "limit": page,
            "offset": skip,
            "returned": len(data),
            "has_more": more,
            "next_offset": skip + len(data) if more else None,
        },
    }


def _update_values(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping) or not data:
        raise ParamError("data", 'must be a non-empty object: the fields to set, or {"$set": {...}}', where=where)
    if any(isinstance(k, str) and k.startswith("$") for k in data):
        if set(data) != {"$set"} or not isinstance(data["$set"], Mapping) or not data["$set"]:
            raise ParamError("data", "only a non-empty $set is supported, or the fields to set directly", where=where)
        data = data["$set"]
    return dict(data)


def update(
    stores: Stores,
    coll: ServiceCollection,
    *,
    filter_: Any,
    data: Any,
    upsert: Any,
    max_rows: Any,
    service: str,
    where: str = "body",
) -> dict[str, Any]:
    """Set fields on the matching documents (at most ``max_rows``), or insert one with ``upsert``."""
    if not isinstance(upsert, bool):
        raise ParamError("upsert", "must be true or false", where=where)
    check_op(coll, "upsert" if upsert else "update", where=where)
    conds = parse_filter(coll.dataset, filter_, where=where)
    allowed = guard_mutation(coll, conds, "update", max_rows, where)
    values = _update_values(data, where)
    if coll.backing in ("config_global", "config_symbol"):
        return _update_config(stores, coll, conds, values, upsert, service, where)
    try:
        doc = check_document(coll, values)
    except ValueProblem as exc:
        raise ParamError("data", str(exc), where=where) from None
    doc.pop("_id", None)
    flt = to_mongo(coll, conds)
    try:
        if upsert:
            key = {k: render(v) for k, v in sorted(flt.items()) if not isinstance(v, dict)}
            res = stores.docs.upsert(coll.name, flt, doc, content_id({"key": key}), max_rows=allowed)
        else:
            res = stores.docs.update(coll.name, flt, doc, max_rows=allowed)
    except TooManyMatches as exc:
        raise ParamError("filter", f"{exc}; nothing was changed", status=409, where=where) from None
    return _update_result(res.matched, res.modified, res.upserted_id)


def _update_result(matched: int, changed: int, upserted_id: Any) -> dict[str, Any]:
    """The counts every client reads: ``modified_count``/``updated_count`` count rows that now hold the values."""
    upserted = upserted_id is not None
    return {
        "matched_count": matched,
        "modified_count": matched,
        "updated_count": matched + (1 if upserted else 0),
        "changed_count": changed,
        "upserted_count": 1 if upserted else 0,
        "upserted_id": upserted_id,
        "upserted": upserted,
        "failed": 0,
    }


def delete(
    stores: Stores, coll: ServiceCollection, *, filter_: Any, max_rows: Any, service: str, where: str = "body"
) -> dict[str, Any]:
    check_op(coll, "delete", where=where)
    conds = parse_filter(coll.dataset, filter_, where=where)
    allowed = guard_mutation(coll, conds, "delete", max_rows, where)
    if coll.backing in ("config_global", "config_symbol"):
        scope = _config_scope(coll, conds, where)
        out = config_service.delete_strategy(stores.configs, scope, changed_by=service, reason=None, service=service)
        return {"deleted_count": 0 if out["already_deleted"] else 1}
    try:
        count = stores.docs.delete(coll.name, to_mongo(coll, conds), max_rows=allowed)
    except TooManyMatches as exc:
        raise ParamError("filter", f"{exc}; nothing was deleted", status=409, where=where) from None
    return {"deleted_count": count}


# --- strategy configs as collections ---------------------------------------------------------


def _config_doc(row: Mapping[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": row["strategy_id"] + (f":{row['symbol']}" if row["symbol"] else ""),
        "strategy_id": row["strategy_id"],
    }
    if row["symbol"]:
        doc["symbol"] = row["symbol"]
    doc.update(
        {
            "parameters": row["parameters"],
            "version": row["version"],
            "created_at": render(row["created_at"]),
            "updated_at": render(row["updated_at"]),
            "created_by": row["updated_by"],
            "metadata": row["metadata"] or {},
        }
    )
    return doc


def _query_configs(
    stores: Stores, coll: ServiceCollection, conds: list[Cond], limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    ids = _values(conds, "strategy_id")
    symbols = _values(conds, "symbol") if coll.backing == "config_symbol" else None
    rows, more = ConfigStore(stores.configs).query(
        strategy_ids=ids, symbols=symbols, overrides=coll.backing == "config_symbol", limit=limit, offset=offset
    )
    rows = [r for r in rows if not r["side"]]
    versions = _values(conds, "version")
    if versions is not None:
        rows = [r for r in rows if r["version"] in versions]
    return [_config_doc(r) for r in rows], more


def _config_scope(coll: ServiceCollection, conds: list[Cond], where: str) -> Scope:
    eq = _equalities(conds)
    needed = ("strategy_id", "symbol") if coll.backing == "config_symbol" else ("strategy_id",)
    missing = [n for n in needed if n not in eq]
    if missing or any(c.op != "eq" for c in conds):
        raise ParamError("filter", f"{coll.name} is addressed by equality on {' and '.join(needed)} only", where=where)
    return strategy_scope(eq["strategy_id"], eq.get("symbol"), None, where=where, opts=where)


_CONFIG_DATA = frozenset(
    {
        "strategy_id",
        "symbol",
        "parameters",
        "metadata",
        "version",
        "created_at",
        "updated_at",
        "created_by",
        "changed_by",
    }
)


def _config_write(
    stores: Stores, scope: Scope, values: Mapping[str, Any], service: str, where: str
) -> tuple[dict[str, Any], bool, bool]:
    """(the stored row, created, changed) for a realtime strategies' config document."""
    unknown = [k for k in values if k not in _CONFIG_DATA and k != "declare_parameters"]
    if unknown:
        raise ParamError(
            "data",
            f"unknown field {str(unknown[0])[:40]!r}; a config document has {', '.join(sorted(_CONFIG_DATA))}",
            where=where,
        )
    for name in ("strategy_id", "symbol"):
        given = values.get(name)
        mine = getattr(scope, name) or None
        if given is not None and given != mine:
            raise ParamError("data", f"{name} {str(given)[:40]!r} differs from the filter's {mine!r}", where=where)
    metadata = values.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ParamError("metadata", "must be an object", where=where)
    meta = dict(metadata or {})
    who = next(
        (v for v in (values.get("changed_by"), meta.get("changed_by"), meta.get("created_by")) if isinstance(v, str)),
        service,
    )[:128]
    why = meta.get("reason") if isinstance(meta.get("reason"), str) else None
    existed = ConfigStore(stores.configs).current(config_service.key(scope)) is not None
    view, change = config_service.set_strategy(
        stores.configs,
        scope,
        check_parameters(values.get("parameters"), where=where),
        changed_by=who,
        reason=why,
        service=service,
        declare=values.get("declare_parameters") is True,
        metadata=meta or None,
    )
    assert change is not None
    return view, not existed, change.changed


def _insert_configs(stores: Stores, coll: ServiceCollection, records: list[Any], service: str) -> dict[str, Any]:
    inserted, duplicates, errors, ids = 0, 0, [], []
    for i, rec in enumerate(records):
        try:
            if not isinstance(rec, Mapping):
                raise ParamError("data", "a record is a JSON object", where="body")
            conds = [Cond("strategy_id", "eq", rec.get("strategy_id"))]
            if coll.backing == "config_symbol":
                conds.append(Cond("symbol", "eq", rec.get("symbol")))
            scope = _config_scope(coll, [c for c in conds if c.value is not None], "body")
            if ConfigStore(stores.configs).current(config_service.key(scope)) is not None:
                duplicates += 1
                continue
            _config_write(stores, scope, rec, service, "body")
            inserted += 1
            ids.append(scope.strategy_id + (f":{scope.symbol}" if scope.symbol else ""))
        except ParamError as exc:
            errors.append({"index": i, "reason": f"{exc.param}: {exc.message}"})
    return {
        "inserted_count": inserted,
        "duplicates": duplicates,
        "failed": len(errors),
        "errors": errors,
        "inserted_ids": ids,
        "inserted_id": ids[0] if ids else None,
    }


def _update_config(
    stores: Stores,
    coll: ServiceCollection,
    conds: list[Cond],
    values: Mapping[str, Any],
    upsert: bool,
    service: str,
    where: str,
) -> dict[str, Any]:
    scope = _config_scope(coll, conds, where)
    exists = ConfigStore(stores.configs).current(config_service.key(scope)) is not None
    if not exists and not upsert:
        return _update_result(0, 0, None)
    _, created, changed = _config_write(stores, scope, values, service, where)
    if created:
        return _update_result(0, 1, scope.strategy_id + (f":{scope.symbol}" if scope.symbol else ""))
    return _update_result(1, int(changed), None)


def _query_audit(
    stores: Stores, coll: ServiceCollection, conds: list[Cond], limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """The server's audit rows and the services' notes, newest first."""
    eq = _equalities(conds)
    want = limit + offset + 1
    store = ConfigStore(stores.configs)
    rows = store.versions(strategy_id=eq.get("strategy_id"), symbol=eq.get("symbol"), limit=want)
    server = [
        {
            **config_service.audit_view(r),
            "old_parameters": r["previous"],
            "new_parameters": r["parameters"],
            "source": "server",
        }
        for r in rows
        if r["kind"] == "strategy"
    ]
    notes, _ = stores.docs.find(
        "strategy_config_audit", to_mongo(coll, conds), sort=[("changed_at", -1)], limit=want, offset=0
    )
    merged = server + [{**render(n), "source": "service"} for n in notes]
    merged = [r for r in merged if _holds(coll, conds, r)]
    merged.sort(key=lambda r: str(r.get("changed_at") or ""), reverse=True)
    return merged[offset : offset + limit], len(merged) > offset + limit


def _holds(coll: ServiceCollection, conds: list[Cond], row: Mapping[str, Any]) -> bool:
    """Conditions on the merged audit rows (equalities were already pushed to both stores)."""
    for c in conds:
        value = row.get(c.field)
        want = (
            c.value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
            if isinstance(c.value, dt.datetime)
            else c.value
        )
        if c.op == "eq" and value != want:
            return False
        if c.op == "ne" and value == want:
            return False
        if c.op == "in" and value not in c.value:
            return False
        if c.op in ("gt", "gte", "lt", "lte"):
            if value is None:
                return False
            a, b = str(value), str(want)
            if not {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[c.op]:
                return False
    return True


def _insert_transitions(stores: Stores, records: list[Any], service: str) -> dict[str, Any]:
    inserted, duplicates, errors, ids = 0, 0, [], []
    for i, rec in enumerate(records):
        try:
            if not isinstance(rec, Mapping):
                raise ParamError("data", "a record is a JSON object", where="body")
            strategy_id = lc.check_strategy_id(rec.get("strategy_id"), where="body")
            event, created = lc.transition(stores.configs, strategy_id, dict(rec), service)
            ids.append(event["event_id"])
            if created:
                inserted += 1
            else:
                duplicates += 1
        except ParamError as exc:
            errors.append({"index": i, "reason": f"{exc.param}: {exc.message}", "status": exc.status})
    return {
        "inserted_count": inserted,
        "duplicates": duplicates,
        "failed": len(errors),
        "errors": errors,
        "inserted_ids": ids,
        "inserted_id": ids[0] if ids else None,
    }


def signals_for_decision(mongo: MongoStore, decision_id: str, limit: int = 500) -> list[dict[str, Any]]:
    rows, _ = ServiceDocs(mongo).find("signals", {"decision_id": decision_id}, limit=limit)
    return [render(r) for r in rows]
