"""Filters, sorts, projections and limits of ``/api/v1``: a declared, typed subset of MongoDB's syntax.

Accepted: ``{field: value}`` (equality) and ``{field: {"$gt"|"$gte"|"$lt"|"$lte"|"$ne": value,
"$in": [values]}}`` on a dataset's declared fields, each value coerced to the field's type.
Everything else — top-level operators (``$where``, ``$or``, ``$expr``), other operators
(``$regex``, ``$function``), unknown or dotted fields (``metadata.x``), objects or arrays
where a value belongs (a nested operator) — is a :class:`ParamError` (HTTP 422) raised
here, before any store is touched. The result is a list of :class:`Cond` whose values are
Python values of the field's type; the store layers translate them, never the raw JSON.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from api.contract.datasets import RANGE, Dataset, FieldSpec
from api.params import MAX_EPOCH_MS, ParamError
from dm_resources.contracts import SYMBOL_RE
from dm_resources.metadata.platform import Cond

OPERATORS: dict[str, str] = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte", "$ne": "ne", "$in": "in"}
MAX_PAGE = 5000  # rows per query page (limit)
DEFAULT_PAGE = 100
MAX_OFFSET = 100_000  # rows skipped by offset; page further with a time filter
MAX_BATCH_RECORDS = 5000  # records per /data/insert request (extractors send ≤ 1,500)
MAX_BATCH_OPERATIONS = 1000  # operations per /batch request
MAX_IN_VALUES = 500
MAX_FILTER_FIELDS = 32
# Updates and deletes: rows one call may touch unless it says more with max_rows, and the most it may say.
DEFAULT_MAX_ROWS = 100
MAX_ROWS_LIMIT = 10_000
MAX_STR = 255
MAX_JSON_CHARS = 65_536  # a json/list field (a position's metadata) as serialized JSON
MAX_DECIMAL_CHARS = 64  # 34 digits, a sign, a point and an exponent fit; checked before the regex
MAX_TIME_CHARS = 64
MAX_DECIMAL_DIGITS = 34  # what Decimal128 holds exactly
DECIMAL_MIN_EXP, DECIMAL_MAX_EXP = -6176, 6111  # Decimal128's exponent range (beyond it: Overflow, a 500)
# Linear: after the integer digits only a literal "." can continue the mantissa, so no digit can be
# matched two ways (``\d+\.?\d*`` backtracks quadratically on "1111…1x").
_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,6})?")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EPOCH_DIGITS_RE = re.compile(r"[0-9]{1,16}")
_EPOCH_MIN, _EPOCH_MAX = 0, MAX_EPOCH_MS


class ValueProblem(ValueError):
    """A value that does not fit its field's type (the message says why)."""


def to_decimal(value: Any) -> Decimal:
    """A decimal string or integer, exactly; a JSON float is accepted only when short enough to be exact."""
    if isinstance(value, bool):
        raise ValueProblem("expected a decimal number, got a boolean")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueProblem(f"{value!r} is not a finite number")
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_DECIMAL_CHARS:
            raise ValueProblem(f"{value[:40]!r}… is longer than {MAX_DECIMAL_CHARS} characters")
        if not _DECIMAL_RE.fullmatch(text):
            raise ValueProblem(f"{value[:40]!r} is not a decimal number")
    else:
        raise ValueProblem(f"expected a decimal string, got {type(value).__name__}")
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
        raise ValueProblem(f"{text[:40]!r} is not a decimal number") from None
    if len(number.as_tuple().digits) > MAX_DECIMAL_DIGITS:
        raise ValueProblem(f"{text[:40]!r} has more than {MAX_DECIMAL_DIGITS} significant digits")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and not DECIMAL_MIN_EXP <= exponent <= DECIMAL_MAX_EXP:
        raise ValueProblem(f"{text[:40]!r} is out of range (exponent {DECIMAL_MIN_EXP}..{DECIMAL_MAX_EXP})")
    return number


def to_datetime(value: Any) -> dt.datetime:
    """ISO-8601 (``Z``/offset; naive means UTC) or epoch milliseconds → aware UTC datetime."""
    if isinstance(value, bool):
        raise ValueProblem("expected ISO-8601 or epoch milliseconds, got a boolean")
    if isinstance(value, int):
        if not _EPOCH_MIN <= value <= _EPOCH_MAX:
            raise ValueProblem(f"{str(value)[:40]} is outside epoch ms 0 .. {_EPOCH_MAX} (1970 .. 9998)")
        return dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
    if not isinstance(value, str):
        raise ValueProblem(f"expected an ISO-8601 string or epoch milliseconds, got {type(value).__name__}")
    text = value.strip()
    if len(text) > MAX_TIME_CHARS:
        raise ValueProblem(f"{value[:40]!r}… is longer than {MAX_TIME_CHARS} characters")
    if _EPOCH_DIGITS_RE.fullmatch(text):  # ASCII digits only: "²".isdigit() is true, int("²") fails
        return to_datetime(int(text))
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueProblem(f"{value[:40]!r} is not ISO-8601 (2026-03-10T00:00:00Z) nor epoch milliseconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        utc = parsed.astimezone(dt.UTC)
    except OverflowError:  # an offset that moves it past year 1 or 9999 in UTC
        raise ValueProblem(f"{value[:40]!r} is outside years 1970..9998 in UTC") from None
    if not _EPOCH_MIN <= epoch_ms(utc) <= _EPOCH_MAX:
        raise ValueProblem(f"{value[:40]!r} is outside years 1970..9998 in UTC")
    return utc


def epoch_ms(value: dt.datetime) -> int:
    return round(value.timestamp() * 1000)


def iso_z(value: dt.datetime | int | None) -> str | None:
    """ISO-8601 UTC with ``Z`` and milliseconds (what the extractor parses ``close_time`` from)."""
    if value is None:
        return None
    if isinstance(value, int):
        value = dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def coerce(spec: FieldSpec, value: Any) -> Any:
    """``value`` as the Python value of ``spec``'s type, or :class:`ValueProblem`."""
    if value is None:
        return None
    t = spec.type
    if isinstance(value, dict) and t != "json":
        raise ValueProblem("an object is not allowed here (nested operators and documents are refused)")
    if t in ("str", "symbol"):
        if not isinstance(value, str):
            raise ValueProblem(f"expected a string, got {type(value).__name__}")
        if len(value) > MAX_STR:
            raise ValueProblem(f"longer than {MAX_STR} characters")
        _check_text(value)
        if t == "symbol" and not SYMBOL_RE.match(value):
            raise ValueProblem(f"{value[:40]!r} is not an upper-case symbol such as BTCUSDT")
        return value
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueProblem(f"expected an integer, got {type(value).__name__}")
        if abs(value) > 2**63 - 1:
            raise ValueProblem("does not fit a 64-bit integer")
        return value
    if t == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueProblem(f"expected a finite number, got {value!r:.40}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            raise ValueProblem(f"{str(value)[:40]}… does not fit a 64-bit float") from None
        if not math.isfinite(number):
            raise ValueProblem(f"expected a finite number, got {value!r:.40}")
        return number
    if t == "decimal":
        return to_decimal(value)
    if t == "datetime":
        return to_datetime(value)
    if t == "date":
        if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
            raise ValueProblem(f"expected a date YYYY-MM-DD, got {str(value)[:40]!r}")
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ValueProblem(f"{value!r} is not a calendar date") from None
    if t == "bool":
        if not isinstance(value, bool):
            raise ValueProblem(f"expected true or false, got {type(value).__name__}")
        return value
    if t == "json":
        if not isinstance(value, dict):
            raise ValueProblem(f"expected an object, got {type(value).__name__}")
        _check_finite(value)
        _check_json_size(value)
        return value
    if t == "list":
        if not isinstance(value, list):
            raise ValueProblem(f"expected an array, got {type(value).__name__}")
        _check_finite(value)
        _check_json_size(value)
        return value
    raise AssertionError(f"unknown field type {t}")  # pragma: no cover


def _check_json_size(value: Any) -> None:
    size = len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    if size > MAX_JSON_CHARS:
        raise ValueProblem(f"{size} bytes of JSON, more than the limit of {MAX_JSON_CHARS}")


def _check_text(value: str) -> None:
    """A string a UTF-8 store and a JSON response can carry: a lone surrogate (``"\\ud800"``) cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueProblem(f"contains a lone surrogate ({value[exc.start]!r} at {exc.start}), not UTF-8 text") from None


def _check_finite(value: Any, depth: int = 0) -> None:
    """NaN/Infinity (which Python's json writes and reads) are not JSON: MariaDB's JSON check refuses them.

    Strings (keys too) must be UTF-8 text.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueProblem(f"{value!r} is not a JSON number")
    if isinstance(value, str):
        _check_text(value)
    if depth > 32:
        raise ValueProblem("nested deeper than 32 levels")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_text(str(k))
            _check_finite(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_finite(v, depth + 1)


def _field(ds: Dataset, name: Any, param: str, *, purpose: str = "filter", where: str = "query") -> FieldSpec:
    if not isinstance(name, str):
        raise ParamError(param, "field names are strings", where=where)
    if name.startswith("$"):
        raise ParamError(
            param,
            f"operator {name[:40]!r} is not allowed here; a {purpose} names fields of {ds.name!r}, "
            f"with operators {', '.join(OPERATORS)} inside a field",
            where=where,
        )
    spec = ds.fields.get(name)
    if spec is None:
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise ParamError(param, f"unknown field {shown!r} for {ds.name!r}; fields: {', '.join(ds.fields)}", where=where)
    return spec


def parse_filter(ds: Dataset, raw: Any, param: str = "filter", *, where: str = "query") -> list[Cond]:
    """A client filter → typed conditions on declared fields (see the module docstring), else 422."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ParamError(param, 'must be a JSON object such as {"symbol": "BTCUSDT"}', where=where)
    if len(raw) > MAX_FILTER_FIELDS:
        raise ParamError(param, f"at most {MAX_FILTER_FIELDS} fields per filter", where=where)
    conds: list[Cond] = []
    for name, value in raw.items():
        spec = _field(ds, name, param, where=where)
        if not spec.filterable:
            raise ParamError(param, f"field {name!r} ({spec.type}) cannot be filtered on", where=where)
        if isinstance(value, dict):
            if not value:
                raise ParamError(param, f"{name}: an empty object is not a condition", where=where)
            for op, operand in value.items():
                if op not in OPERATORS:
                    raise ParamError(
                        param,
                        f"{name}: operator {str(op)[:40]!r} is not allowed; allowed: {', '.join(OPERATORS)}",
                        where=where,
                    )
                conds.append(_cond(spec, OPERATORS[op], operand, param, where))
        elif isinstance(value, list):
            raise ParamError(param, f'{name}: an array is not a value; use {{"$in": [...]}}', where=where)
        else:
            conds.append(_cond(spec, "eq", value, param, where))
    return conds


def _cond(spec: FieldSpec, op: str, operand: Any, param: str, where: str = "query") -> Cond:
    try:
        if op == "in":
            if not isinstance(operand, list) or not operand:
                raise ValueProblem("$in takes a non-empty array")
            if len(operand) > MAX_IN_VALUES:
                raise ValueProblem(f"$in takes at most {MAX_IN_VALUES} values")
            values = [coerce(spec, v) for v in operand]
            if any(v is None for v in values):
                raise ValueProblem("$in values cannot be null")
            return Cond(spec.name, op, tuple(values))
        if isinstance(operand, list):
            raise ValueProblem("an array is not allowed here")
        value = coerce(spec, operand)
        if value is None and op not in ("eq", "ne"):
            raise ValueProblem(f"${op} null is not a comparison")
        return Cond(spec.name, op, value)
    except ValueProblem as exc:
        raise ParamError(param, f"{spec.name}: {exc}", where=where) from None


def parse_sort(ds: Dataset, raw: Any, param: str = "sort", *, where: str = "query") -> list[tuple[str, int]]:
    """``{field: 1|-1}`` on declared, comparable fields, in the object's order."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ParamError(param, 'must be a JSON object such as {"close_time": -1}', where=where)
    if len(raw) > 4:
        raise ParamError(param, "at most 4 sort fields", where=where)
    out: list[tuple[str, int]] = []
    for name, direction in raw.items():
        spec = _field(ds, name, param, purpose="sort", where=where)
        if not spec.filterable:
            raise ParamError(param, f"field {name!r} ({spec.type}) cannot be sorted on", where=where)
        if isinstance(direction, bool) or direction not in (1, -1):
            raise ParamError(param, f"{name}: direction must be 1 (ascending) or -1 (descending)", where=where)
        out.append((name, int(direction)))
    return out


def parse_fields(ds: Dataset, raw: Any, param: str = "fields", *, where: str = "query") -> list[str] | None:
    """A projection: declared field names (list, or comma-separated string from a query parameter)."""
    if raw is None or raw == "" or raw == []:
        return None
    names = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
    if not isinstance(names, list):
        raise ParamError(param, "must be a list of field names", where=where)
    out: list[str] = []
    for n in names:
        spec = _field(ds, n, param, purpose="projection", where=where)
        if spec.name not in out:
            out.append(spec.name)
    return out


def check_page(limit: int | None, offset: int | None, *, where: str = "query") -> tuple[int, int]:
    limit = DEFAULT_PAGE if limit is None else limit
    offset = 0 if offset is None else offset
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ParamError("limit", f"{limit!r} is out of bounds: the page size limit is 1..{MAX_PAGE}", where=where)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise ParamError(
            "offset",
            f"{offset!r} is out of bounds: the offset limit is 0..{MAX_OFFSET}; page further with a time filter",
            where=where,
        )
    return limit, offset


def parse_json_param(value: str | None, param: str) -> Any:
    """A JSON-encoded query parameter (``filter``/``sort``), or 422 naming it."""
    if value is None or value == "":
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ParamError(param, f"is not valid JSON: {value[:60]!r}") from None


def check_record(ds: Dataset, record: Any) -> dict[str, Any]:
    """One record of an insert (or the ``data`` of an update): declared fields only, typed.

    Raises :class:`ValueProblem` naming the first bad field; the caller decides whether that
    fails one record (inserts) or the request (updates).
    """
    if not isinstance(record, dict):
        raise ValueProblem(f"a record is a JSON object, got {type(record).__name__}")
    out: dict[str, Any] = {}
    for name, value in record.items():
        if not isinstance(name, str) or name.startswith("$") or name not in ds.fields:
            raise ValueProblem(f"unknown field {str(name)[:64]!r}; fields: {', '.join(ds.fields)}")
        try:
            out[name] = coerce(ds.fields[name], value)
        except ValueProblem as exc:
            raise ValueProblem(f"{name}: {exc}") from None
    return out


def check_update_data(ds: Dataset, data: Any, param: str = "data") -> dict[str, Any]:
    """``data`` of an update: the fields to set, or ``{"$set": {...}}``; nothing else."""
    if not isinstance(data, Mapping) or not data:
        raise ParamError(param, 'must be a non-empty object: the fields to set, or {"$set": {...}}')
    if any(isinstance(k, str) and k.startswith("$") for k in data):
        if set(data) != {"$set"}:
            ops = ", ".join(sorted(str(k) for k in data if str(k).startswith("$")))
            raise ParamError(param, f"only $set is supported (got {ops[:80]}); or send the fields to set directly")
        data = data["$set"]
        if not isinstance(data, Mapping) or not data:
            raise ParamError(param, "$set must be a non-empty object")
    try:
        return check_record(ds, dict(data))
    except ValueProblem as exc:
        raise ParamError(param, str(exc)) from None


# --- mass mutations -------------------------------------------------------------------------------


def _bounded_range(ds: Dataset, conds: list[Cond]) -> bool:
    """Whether some time field is bounded on both sides (or fixed) by ``conds``."""
    for name, spec in ds.fields.items():
        if spec.type not in ("datetime", "date"):
            continue
        ops = {c.op for c in conds if c.field == name and c.value is not None}
        if ops & {"eq", "in"} or (ops & {"gt", "gte"} and ops & {"lt", "lte"}):
            return True
    return False


def _describe(alternative: tuple[str, ...]) -> str:
    names = [("a time range (both bounds on a time field)" if n == RANGE else n) for n in alternative]
    return " with ".join(names)


def check_mutation_filter(ds: Dataset, conds: list[Cond], verb: str, param: str = "filter") -> None:
    """An update or delete must name its rows by a key (``Dataset.narrowing``); negations alone never do.

    ``{"position_id": {"$ne": null}}`` deleted every position: a filter of only ``$ne`` matches
    nearly every row, and one on non-key fields (``strategy_id``) may match thousands.
    """
    if not ds.narrowing:
        return
    if conds and all(c.op == "ne" for c in conds):
        raise ParamError(
            param,
            f"a {verb} whose filter is only negations ($ne) matches nearly every row: refused; "
            f"name the rows by {'; or '.join(_describe(a) for a in ds.narrowing)}",
            where="body",
        )
    fixed = {c.field for c in conds if c.op in ("eq", "in") and c.value is not None}
    for alternative in ds.narrowing:
        if all((_bounded_range(ds, conds) if n == RANGE else n in fixed) for n in alternative):
            return
    raise ParamError(
        param,
        f"a {verb} of {ds.name!r} must narrow its rows by a key: "
        f"{'; or '.join(_describe(a) for a in ds.narrowing)} (equality or $in); "
        f"this filter names {', '.join(sorted({c.field for c in conds})) or 'nothing'}",
        where="body",
    )


def check_max_rows(value: Any, param: str = "max_rows") -> int:
    """The most rows an update or delete may touch: ``DEFAULT_MAX_ROWS`` unless the call says, at most the limit."""
    if value is None:
        return DEFAULT_MAX_ROWS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROWS_LIMIT:
        raise ParamError(param, f"must be an integer 1..{MAX_ROWS_LIMIT}, got {str(value)[:40]}", where="body")
    return value
