"""Mass mutations: updates and deletes must name their rows by a key, are bounded by max_rows, and deletes are audited.

``DELETE {"filter": {"position_id": {"$ne": null}}}`` deleted every position, capped by nothing
and recorded nowhere. Over real HTTP against both metadata backends.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import func, select

from dm_resources.metadata.platform import MUTATION_AUDIT, POSITIONS
from tests import test_platform_api as platform
from tests.test_platform_api import ENGINE, LEGACY, Env, auth, detail

env, http = platform.env, platform.http  # the platform tests' module fixtures (both metadata backends)


def seed(http: httpx.Client, symbol: str, n: int, status: str = "closed") -> None:
    records = [
        {"position_id": f"{symbol}-{i}", "symbol": symbol, "position_side": "LONG", "status": status} for i in range(n)
    ]
    body = {"database": "mysql", "collection": "positions", "records": records}
    assert http.post("/api/v1/data/insert", json=body, headers=auth(ENGINE)).json()["inserted_count"] == n


def count(env: Env, symbol: str) -> int:
    with env.meta._read() as conn:
        return int(conn.execute(select(func.count()).where(POSITIONS.c.symbol == symbol)).scalar() or 0)


def delete(http: httpx.Client, flt: dict[str, Any], token: str = ENGINE, **extra: Any) -> httpx.Response:
    headers = {**auth(token), **extra.pop("headers", {})}
    return http.request("DELETE", "/api/v1/mysql/positions", json={"filter": flt, **extra}, headers=headers)


def audit_rows(env: Env, dataset: str) -> list[dict[str, Any]]:
    with env.meta._read() as conn:
        stmt = select(MUTATION_AUDIT).where(MUTATION_AUDIT.c.dataset == dataset).order_by(MUTATION_AUDIT.c.id)
        return [dict(r._mapping) for r in conn.execute(stmt)]


def test_a_negation_only_filter_is_refused_and_deletes_nothing(http: httpx.Client, env: Env) -> None:
    seed(http, "NEGUSDT", 3)
    before = audit_rows(env, "positions")
    for flt in ({"position_id": {"$ne": None}}, {"status": {"$ne": "open"}, "symbol": {"$ne": "XYZUSDT"}}):
        assert "only negations" in detail(delete(http, flt), 422, "filter")
        put = http.put(
            "/api/v1/mysql/positions", json={"filter": flt, "data": {"close_reason": "x"}}, headers=auth(ENGINE)
        )
        assert "only negations" in detail(put, 422, "filter")
    assert count(env, "NEGUSDT") == 3 and audit_rows(env, "positions") == before


def test_a_filter_that_does_not_narrow_by_a_key_is_refused(http: httpx.Client, env: Env) -> None:
    seed(http, "KEYUSDT", 2)
    for flt in (
        {"strategy_id": "trend-1"},
        {"symbol": "KEYUSDT"},  # a symbol alone: every position it ever had
        {"symbol": "KEYUSDT", "closed_at": {"$gte": "2026-01-01T00:00:00Z"}},  # one-sided: open-ended
        {"symbol": "KEYUSDT", "status": {"$ne": "open"}},
    ):
        msg = detail(delete(http, flt), 422, "filter")
        assert "must narrow its rows by a key" in msg and "position_id" in msg, msg
    assert count(env, "KEYUSDT") == 2
    # The keys: position_id; symbol with status; symbol with a time range bounded on both sides.
    assert delete(http, {"position_id": "KEYUSDT-0"}).json() == {"deleted_count": 1}
    ranged = {"symbol": "KEYUSDT", "created_at": {"$gte": "2020-01-01T00:00:00Z", "$lt": "2100-01-01T00:00:00Z"}}
    assert delete(http, ranged).json() == {"deleted_count": 1}
    # daily_pnl: a date, or a date range with both bounds.
    one_sided = {"filter": {"date": {"$gte": "2026-01-01"}}}
    resp = http.request("DELETE", "/api/v1/mysql/daily_pnl", json=one_sided, headers=auth(ENGINE))
    assert "must narrow" in detail(resp, 422, "filter")
    both = {"filter": {"date": {"$gte": "2031-01-01", "$lte": "2031-01-31"}}}
    assert http.request("DELETE", "/api/v1/mysql/daily_pnl", json=both, headers=auth(ENGINE)).status_code == 200


def test_max_rows_bounds_a_mutation_and_a_larger_match_changes_nothing(http: httpx.Client, env: Env) -> None:
    seed(http, "MAXUSDT", 5)
    flt = {"symbol": "MAXUSDT", "status": "closed"}
    msg = detail(delete(http, flt, max_rows=3), 422, "max_rows")
    assert "more than max_rows=3" in msg and "nothing was changed" in msg
    put = http.put(
        "/api/v1/mysql/positions",
        json={"filter": flt, "data": {"close_reason": "sweep"}, "max_rows": 4},
        headers=auth(ENGINE),
    )
    detail(put, 422, "max_rows")
    with env.meta._read() as conn:
        reasons = conn.execute(select(POSITIONS.c.close_reason).where(POSITIONS.c.symbol == "MAXUSDT")).scalars()
        assert set(reasons) == {None}
    assert count(env, "MAXUSDT") == 5
    for bad in (0, 10_001, "all"):
        assert delete(http, flt, max_rows=bad).status_code == 422
    # The default bound is 100 rows: more needs an explicit max_rows.
    seed(http, "BIGUSDT", 101)
    assert "max_rows=100" in detail(delete(http, {"symbol": "BIGUSDT", "status": "closed"}), 422, "max_rows")
    assert delete(http, {"symbol": "BIGUSDT", "status": "closed"}, max_rows=101).json() == {"deleted_count": 101}
    assert delete(http, flt, max_rows=5).json() == {"deleted_count": 5}


def test_every_delete_writes_an_audit_row_naming_who_what_and_how_many(http: httpx.Client, env: Env) -> None:
    seed(http, "AUDUSDT", 2)
    before = len(audit_rows(env, "positions"))
    flt = {"symbol": "AUDUSDT", "status": "closed"}
    assert delete(http, flt, headers={"X-Petrosa-Service": "tradeengine"}).json() == {"deleted_count": 2}
    assert delete(http, {"position_id": "nope"}, token=LEGACY).json() == {"deleted_count": 0}
    rows = audit_rows(env, "positions")[before:]
    assert [(r["actor"], r["operation"], r["count"]) for r in rows] == [
        ("service:tradeengine", "delete", 2),
        ("DM_API_TOKEN", "delete", 0),
    ]
    assert json.loads(rows[0]["filter"]) == flt
    assert ENGINE not in json.dumps([str(r) for r in rows]) and LEGACY not in json.dumps([str(r) for r in rows])
    # A refused delete (too many rows) leaves no audit row: the row commits with the delete.
    seed(http, "AUDUSDT", 2)
    detail(delete(http, flt, max_rows=1), 422, "max_rows")
    assert len(audit_rows(env, "positions")) == before + 2
    # Through a batch, each delete operation is audited too, with the token's digest as the actor.
    ops = [{"type": "delete", "filter": flt}, {"type": "delete", "filter": {"position_id": {"$ne": None}}}]
    res = http.post("/api/v1/mysql/positions/batch", json={"operations": ops}, headers=auth(ENGINE)).json()
    assert [r["ok"] for r in res["results"]] == [True, False] and "only negations" in res["results"][1]["error"]
    last = audit_rows(env, "positions")[-1]
    assert last["count"] == 2 and last["actor"].startswith("token:sha256:")
