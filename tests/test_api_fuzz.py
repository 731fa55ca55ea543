"""Property-based fuzz of every route: thousands of generated requests, not one 5xx.

Two generators, both over the live API on loopback with seeded data and a token that can
write everything (so writes get past auth and into the contract code):

* **schemathesis** from the published OpenAPI schema: every operation, its parameters and
  bodies by their declared types, plus the schema's examples;
* **a hostile client** (hypothesis) for what a schema does not suggest: lone surrogates,
  4,400-digit and 400-digit numbers, NaN and Infinity, times in year 1 and 9999 and offsets
  that leave the calendar, unicode digits, operators and dotted fields in filters, objects
  and arrays where a scalar belongs, deep nesting — in bodies, filters and query strings of
  every route.

A 5xx is always our bug, never the client's input: the test fails listing each one. The
request count is asserted (and printed with ``-s``) so the run stays meaningful.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_api_routes import TOKEN, base, seeded  # noqa: F401  (module fixtures: the seeded live API)

schemathesis = pytest.importorskip("schemathesis")

SCHEMA_EXAMPLES = 25  # per operation
HOSTILE_EXAMPLES = 2500
AUTH = {"Authorization": f"Bearer {TOKEN}"}

FIELDS = [
    "symbol", "position_id", "position_side", "status", "strategy_id", "entry_price", "quantity", "entry_time",
    "metadata", "entry_trade_ids", "closed_at", "pnl", "duration_seconds", "date", "daily_pnl", "created_at",
    "open_time", "close_time", "timestamp", "open_price", "high_price", "low_price", "close_price", "volume",
    "quote_asset_volume", "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume", "number_of_trades",
    "interval", "extracted_at", "close", "trades", "agg_id", "price", "kind", "window_end",
    "$where", "$or", "metadata.x", "", "é",
]  # fmt: skip
STRANGE_TEXT = [
    "\ud800", "a\udfffb", "²", "١٢٣", "1" * 4400, "9" * 20, "1e400", "-0", "NaN", "Infinity",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9998-12-31T23:59:59Z", "2026-02-30",
    "2026-03-10T25:00:00Z", "0", "-1",
    "253402300799999", "1" * 30 + "x", "1." * 200, "BTCUSDT", "btcusdt", "ETHUSDT", "1m", "1M", "m15", "15m", "open",
    "closed", "LONG", "x" * 300, " ", "", "{}", "[]", "null", "true", "\x00", "../admin", "%2F", "klines_1M",
]  # fmt: skip
COLLECTIONS = [
    "positions", "daily_pnl", "klines_1m", "klines_1M", "klines_m15", "klines_1w", "candles", "agg_trades",
    "trades", "funding", "mark_prices", "book_tickers", "analytics", "nope", "..%2Fadmin", "klines_99m",
]  # fmt: skip
DATABASES = ["mysql", "mongodb", "admin", "\ud800"]

scalars = st.one_of(
    st.sampled_from(STRANGE_TEXT),
    st.text(alphabet=st.characters(codec=None, categories=["L", "N", "P", "S", "Cs", "Zs"]), max_size=16),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3)),
    max_leaves=5,
)
OPS = ["$gt", "$gte", "$lt", "$lte", "$ne", "$in", "$regex", "$nin", "$exists"]
conditions = st.one_of(scalars, values, st.dictionaries(st.sampled_from(OPS), scalars, min_size=1, max_size=2))
filters = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), conditions, max_size=4),
    st.fixed_dictionaries({"symbol": st.sampled_from(["BTCUSDT", "ETHUSDT"])}, optional={"open_time": conditions}),
    values,
)
records = st.lists(st.one_of(st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=8), values), max_size=3)
operations = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["insert", "update", "delete", "upsert", 3])},
        optional={"data": st.one_of(records, values), "filter": filters, "upsert": values, "max_rows": values},
    ),
    max_size=4,
)
max_rows = st.one_of(st.none(), st.integers(min_value=-5, max_value=20_000))

POST_BODIES = {
    "/api/v1/data/insert": st.fixed_dictionaries(
        {"database": st.sampled_from(DATABASES), "collection": st.sampled_from(COLLECTIONS), "records": records}
    ),
    "/api/v1/data/query": st.fixed_dictionaries(
        {"database": st.sampled_from(DATABASES), "collection": st.sampled_from(COLLECTIONS)},
        optional={
            "filter": filters,
            "sort": st.dictionaries(st.sampled_from(FIELDS), values, max_size=2),
            "limit": values,
            "offset": values,
            "fields": values,
        },
    ),
}
KEYS = [b"k-1", b"k-2", b'"quoted-key"', b"x" * 300, b"", b"a b", "é".encode("latin-1"), b"tab\tkey", b"\x7f"]
GET_PATHS = [
    "/data/candles", "/data/trades", "/data/depth", "/data/funding", "/data/orderbook", "/health", "/health/summary",
    "/analysis/volatility", "/analysis/correlation", "/analysis/funding", "/catalog/datasets", "/positions",
    "/positions/history", "/positions/open", "/pnl/daily", "/backfill/jobs",
]  # fmt: skip
PARAMS = [
    "pair", "pairs", "period", "start", "end", "limit", "format", "from", "to", "symbol", "status", "position_side",
    "strategy_id", "offset", "after", "depth", "at", "kind", "interval",
]  # fmt: skip


def hostile_request() -> st.SearchStrategy[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx kwargs): bodies and query strings no schema would suggest."""
    text_values = st.one_of(st.sampled_from(STRANGE_TEXT), st.text(max_size=30))
    query = st.dictionaries(st.sampled_from(PARAMS), text_values, max_size=5)
    return st.one_of(
        st.tuples(st.just("POST"), st.sampled_from(list(POST_BODIES)), st.just(None)).flatmap(
            lambda t: POST_BODIES[t[1]].map(lambda body, t=t: (t[0], t[1], {"content": _json(body)}))
        ),
        st.tuples(
            st.sampled_from(["PUT", "DELETE"]), st.sampled_from(DATABASES[:3]), st.sampled_from(COLLECTIONS)
        ).flatmap(
            lambda t: st.fixed_dictionaries(
                {"filter": filters},
                optional={"data": st.one_of(records, values, filters), "upsert": values, "max_rows": max_rows},
            ).map(lambda body, t=t: (t[0], f"/api/v1/{t[1]}/{t[2]}", {"content": _json(body)}))
        ),
        st.tuples(st.sampled_from(DATABASES[:3]), st.sampled_from(COLLECTIONS), operations).map(
            lambda t: ("POST", f"/api/v1/{t[0]}/{t[1]}/batch", {"content": _json({"operations": t[2]})})
        ),
        st.tuples(st.sampled_from(COLLECTIONS), filters, st.one_of(st.none(), filters), text_values).map(
            lambda t: (
                "GET",
                f"/api/v1/mysql/{t[0]}" if t[0] in ("positions", "daily_pnl") else f"/api/v1/mongodb/{t[0]}",
                {"query": {"filter": _json(t[1]), **({"sort": _json(t[2])} if t[2] else {}), "limit": t[3]}},
            )
        ),
        st.tuples(st.sampled_from(GET_PATHS), query).map(lambda t: ("GET", t[0], {"query": t[1]})),
        st.tuples(st.sampled_from(STRANGE_TEXT)).map(lambda t: ("GET", "/positions/" + _path(t[0]), {})),
        st.tuples(st.sampled_from(STRANGE_TEXT)).map(lambda t: ("GET", "/catalog/datasets/" + _path(t[0]), {})),
    )


def _json(value: Any) -> str:
    """JSON as a careless client writes it: NaN, Infinity and \\ud800 escapes included."""
    return json.dumps(value)


def _path(text: str) -> str:
    """A path segment percent-encoded byte by byte (a surrogate becomes %ED%A0%80: not UTF-8, sent anyway)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _query(params: dict[str, str]) -> str:
    return urlencode(params, encoding="utf-8", errors="surrogatepass")


def test_thousands_of_generated_requests_and_not_one_5xx(base: str) -> None:  # noqa: F811
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    def record(method: str, path: str, status: int, sent: str) -> None:
        statuses[status] += 1
        if status >= 500 and len(failures) < 20:
            failures.append(f"{status} {method} {path} {sent[:400]}")

    # 1. From the schema: every operation.
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations_seen = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations_seen += 1

        @given(case=st.one_of(operation.as_strategy(), *operation.get_strategies_from_examples()))
        @settings(
            max_examples=SCHEMA_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def from_schema(case: Any) -> None:
            resp = case.call(headers=AUTH, timeout=30)
            record(case.method, case.formatted_path, resp.status_code, f"{case.query} {str(case.body)[:300]}")

        from_schema()
    assert operations_seen >= 30

    # 2. The hostile client.
    with httpx.Client(base_url=base, timeout=30, headers={**AUTH, "Content-Type": "application/json"}) as client:

        @given(req=hostile_request(), key=st.one_of(st.none(), st.sampled_from(KEYS)))
        @settings(
            max_examples=HOSTILE_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def hostile(req: tuple[str, str, dict[str, Any]], key: bytes | None) -> None:
            method, path, kw = req
            query = kw.pop("query", None)
            url = f"{path}?{_query(query)}" if query else path
            headers = {"Idempotency-Key": key} if key is not None and method != "GET" else None
            resp = client.request(method, url, headers=headers, **kw)
            record(method, path, resp.status_code, str(kw))

        hostile()

    total = sum(statuses.values())
    fives = sum(n for s, n in statuses.items() if s >= 500)
    print(f"fuzz: {total} requests, {fives} 5xx, statuses {dict(sorted(statuses.items()))}")
    assert total >= 3000, statuses
    assert not failures, "\n".join(failures)
