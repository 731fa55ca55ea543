"""Every guard of the services' routes, fed the bad input: the answer names the problem and nothing changes.

Auth (unknown service or token, wrong scope, a dataset the service may not write) in enforce
mode vs audit mode; a stale ``expected_before``; a transition from the wrong state; an unknown
config parameter; a rollback to a version that does not exist; a malformed or stale cursor;
loose and negation-only mass mutations; operations a collection does not allow.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
from typing import Any

import orjson
import pytest

from api import identity
from api.contract import trading
from api.contract.auth import DEFAULT_SERVICE_SCOPES, TokenConfigError, decide, identify, parse_tokens
from api.contract.collections import check_document, lookup
from api.contract.config import against_declared, check_app_config, check_parameters
from api.contract.filters import ValueProblem
from api.params import ParamError
from dm_resources.metadata.ledger import LedgerStore, canonical, row_hash, verify_chain
from tests.conftest import metadata_backends
from tests.test_platform_services_contract import (
    ENGINE,
    REALTIME,
    TA_BOT,
    TOKENS,
    Env,
    _dry_run,
    count,
    position,
    services_env,
)

env = pytest.fixture(scope="module", params=metadata_backends(), name="env")(services_env)


def msg(resp: Any) -> str:
    return str(resp.json()["detail"][0]["msg"])


def loc(resp: Any) -> list[str]:
    return [str(x) for x in resp.json()["detail"][0]["loc"]]


# --- auth: enforce refuses, audit passes and counts -----------------------------------------------


CASES = [  # (what, headers, status in enforce, decision label)
    ("no token", {"X-Petrosa-Service": ENGINE}, 401, "no_token"),
    (
        "unknown token",
        {"X-Petrosa-Service": ENGINE, "Authorization": "Bearer not-a-token-0123456789"},
        401,
        "bad_token",
    ),
    (
        "unknown service",
        {"X-Petrosa-Service": "petrosa-cio", "Authorization": "Bearer not-a-token-0123456789"},
        401,
        "unknown_service",
    ),
    (
        "another service's token",
        {"X-Petrosa-Service": ENGINE, "Authorization": f"Bearer {TOKENS[TA_BOT]}"},
        401,
        "token_mismatch",
    ),
    (
        "a malformed service name",
        {"X-Petrosa-Service": "Robert'); DROP", "Authorization": f"Bearer {TOKENS[ENGINE]}"},
        401,
        "bad_service_name",
    ),
    ("wrong scope", {"X-Petrosa-Service": TA_BOT, "Authorization": f"Bearer {TOKENS[TA_BOT]}"}, 403, "scope"),
]


@pytest.mark.parametrize(("what", "headers", "status", "decision"), CASES, ids=[c[0] for c in CASES])
def test_unverified_or_unauthorised_writes_are_refused_in_enforce_and_counted_passes_in_audit(
    env: Env, what: str, headers: dict[str, str], status: int, decision: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = "/api/v1/trading/daily-pnl/2025-01-05"
    with env.anonymous(headers=headers) as c:
        refused = c.put(path, json={"daily_pnl": 5})
        metrics = c.get("/metrics").text
    assert refused.status_code == status and loc(refused) == ["header", "Authorization"], refused.text
    assert TOKENS[TA_BOT] not in refused.text and "not-a-token" not in refused.text
    assert count(env.meta, "SELECT COUNT(*) FROM daily_pnl WHERE date = '2025-01-05'") == 0
    assert re.search(
        rf'dm_api_auth_total\{{decision="{decision}",passed="false",route="/api/v1/trading/daily-pnl/{{date_value}}"',
        metrics,
    )

    with caplog.at_level(logging.WARNING, logger="api.identity"), env.anonymous(mode="audit", headers=headers) as c:
        passed = c.put(path, json={"daily_pnl": 5})
        audit_metrics = c.get("/metrics").text
    assert passed.status_code == 200, passed.text
    assert re.search(
        rf'dm_api_auth_total\{{decision="{decision}",passed="true",'
        rf'route="/api/v1/trading/daily-pnl/{{date_value}}",service="[a-z-]+"\}} [1-9]',
        audit_metrics,
    )
    # ... and logged (once a minute per service, route and reason, so a migration's log stays readable)
    route = "/api/v1/trading/daily-pnl/{date_value}"
    assert any(key[1] == route and key[2] == decision for key in identity._logged)
    if caplog.records:
        assert any("auth audit" in r.message and decision in r.message for r in caplog.records)
    assert count(env.meta, "SELECT COUNT(*) FROM daily_pnl WHERE date = '2025-01-05'") == 1
    with env.service(ENGINE) as c:  # reset for the next case
        c.put(path, json={"daily_pnl": 5})
    env.meta._write(lambda conn: conn.exec_driver_sql("DELETE FROM daily_pnl WHERE date = '2025-01-05'"))


def test_a_dataset_the_service_may_not_write_is_refused_in_enforce_and_passes_counted_in_audit(env: Env) -> None:
    """The extractor's scopes hold klines only: positions are not its dataset."""
    extractor = {"Authorization": "Bearer extractor-api-token-0123456789"}
    with env.anonymous(headers=extractor) as c:
        refused = c.post("/api/v1/trading/positions", json=position("not-mine", symbol="NOTUSDT"))
    with env.anonymous(mode="audit", headers=extractor) as c:
        passed = c.post("/api/v1/trading/positions", json=position("not-mine", symbol="NOTUSDT"))
        metrics = c.get("/metrics").text
    assert refused.status_code == 403 and "positions:write" in msg(refused)
    assert passed.status_code == 201
    assert re.search(
        r'dm_api_auth_total\{decision="scope",passed="true",route="/api/v1/trading/positions",service="api-token"\} 1',
        metrics,
    )
    with env.service(ENGINE) as c:
        c.patch("/api/v1/trading/positions/not-mine", json={"status": "closed"})


def test_reads_of_positions_and_daily_pnl_need_the_read_scope_when_tokens_are_set(env: Env) -> None:
    with env.anonymous() as c:
        for path in (
            "/api/v1/trading/positions",
            "/positions",
            "/pnl/daily",
            "/api/v1/mysql/positions",
            "/api/v1/config/strategies",
        ):
            assert c.get(path).status_code == 401, path
        assert c.post("/api/v1/data/query", json={"database": "mysql", "collection": "daily_pnl"}).status_code == 401
        assert c.get("/data/candles", params={"pair": "BTCUSDT", "period": "15m", "limit": 1}).status_code == 200


def test_backfill_start_accepts_a_scoped_token(env: Env) -> None:
    """backfill:write, not only DM_API_TOKEN: with the scope the request reaches Dagster (down here: 503)."""
    scoped = parse_tokens(json.dumps({"backfill-token-0123456789": ["backfill:write"]}))
    ident = identify(scoped, None, "backfill-token-0123456789")
    assert decide(scoped, ident, "backfill:write", "enforce", open_when_unset=False).allowed
    assert not decide(scoped, ident, "positions:write", "enforce", open_when_unset=False).allowed
    body = {"symbols": ["BTCUSDT"], "start": "2026-03-01", "end": "2026-03-02"}
    with env.service(ENGINE) as c:  # the engine has no backfill:write
        assert c.post("/backfill/start", json=body).status_code == 403


# --- the ledger, lifecycle, configs ---------------------------------------------------------------


def test_a_supersede_with_a_stale_expected_before_is_409_naming_the_field_and_changes_nothing(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.post("/api/v1/trading/positions", json=position("drift-1", symbol="DRFUSDT")).raise_for_status()
        _dry_run(c, "drift-1", "dry-drift")
        c.patch("/api/v1/trading/positions/drift-1", json={"entry_price": "27200"}).raise_for_status()  # moved on
        chain_before = len(LedgerStore(env.meta).chain())
        body = {
            "id": "drift-1",
            "expected_before": {"status": "open", "entry_price": "27123.5"},
            "reason_code": "phantom_superseded",
            "evidence_ref": "sha256:1",
            "applied_by": "a",
            "approved_by": "b",
            "dry_run_adjustment_id": "dry-drift",
        }
        resp = c.post("/api/v1/ledger/positions/supersede", json=body)
        unknown = c.post(
            "/api/v1/ledger/positions/supersede",
            json={**body, "dry_run_adjustment_id": "no-such-dry-run", "expected_before": {"status": "open"}},
        )
        missing = c.post(
            "/api/v1/ledger/positions/supersede", json={**body, "id": "no-such-position", "expected_before": {}}
        )
        stored = c.get("/api/v1/trading/positions/drift-1").json()
    assert resp.status_code == 409 and loc(resp) == ["body", "expected_before"] and "entry_price" in msg(resp)
    assert unknown.status_code == 422 and loc(unknown) == ["body", "dry_run_adjustment_id"]
    assert missing.status_code == 404
    assert stored["status"] == "open" and len(LedgerStore(env.meta).chain()) == chain_before


def test_an_adjustment_may_not_change_money_and_an_apply_needs_its_dry_run(env: Env) -> None:
    with env.service(ENGINE) as c:
        body = _dry_run(c, "money-1", "dry-money")
        money = c.post(
            "/api/v1/ledger/adjustments", json={**body, "adjustment_id": "m2", "after": {**body["after"], "pnl": "1"}}
        )
        apply = c.post(
            "/api/v1/ledger/adjustments",
            json={**body, "adjustment_id": "m3", "run_mode": "apply", "dry_run_adjustment_id": "nope"},
        )
        reused = c.post("/api/v1/ledger/adjustments", json={**body, "evidence_ref": "sha256:other"})
    assert money.status_code == 422 and "money columns" in money.text
    assert apply.status_code == 422 and loc(apply) == ["body", "dry_run_adjustment_id"]
    assert reused.status_code == 409 and loc(reused) == ["body", "adjustment_id"]


def test_a_tampered_adjustment_breaks_the_hash_chain() -> None:
    first = {"adjustment_id": "a", "applied_at": "2026-01-01T00:00:00Z", "prev_hash": ""}
    rows = []
    prev = ""
    for i in range(3):
        payload = {k: f"{k}-{i}" for k in ("adjustment_id", "applied_by", "approved_by", "target_table", "target_key")}
        payload.update(applied_at=first["applied_at"], before={}, after={}, reason_code="annotation", evidence_ref="e")
        payload.update(run_mode="dry_run", dry_run_adjustment_id=None, prev_hash=prev)
        payload["row_hash"] = prev = row_hash(prev, {k: v for k, v in payload.items() if k != "row_hash"})
        rows.append(payload)
    assert verify_chain(rows)
    rows[1]["evidence_ref"] = "edited"
    assert not verify_chain(rows)
    assert canonical({"b": 1, "a": [1.5]}) == '{"a":[1.5],"b":1}'


def test_a_transition_from_the_wrong_state_is_409_naming_the_current_state_and_stores_nothing(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post(
            "/api/v1/strategies/wrong-1/lifecycle/events",
            json={"from_state": None, "to_state": "shadow", "transitioned_by": "m"},
        )
        resp = c.post(
            "/api/v1/strategies/wrong-1/lifecycle/events",
            json={"from_state": "live", "to_state": "paused", "transitioned_by": "m"},
        )
        again = c.post(
            "/api/v1/strategies/wrong-1/lifecycle/state",
            json={"from_state": None, "to_state": "live", "transitioned_by": "m"},
        )
        bad = c.post(
            "/api/v1/strategies/wrong-1/lifecycle/events",
            json={"from_state": "shadow", "to_state": "LIVE!", "transitioned_by": "m"},
        )
        unknown = c.post(
            "/api/v1/strategies/wrong-1/lifecycle/events",
            json={"from_state": "shadow", "to_state": "live", "transitioned_by": "m", "colour": "red"},
        )
        events = c.get("/api/v1/strategies/wrong-1/lifecycle/events").json()["events"]
    assert resp.status_code == 409 and loc(resp) == ["body", "from_state"] and "'shadow'" in msg(resp)
    assert again.status_code == 409
    assert bad.status_code == 422 and loc(bad) == ["body", "to_state"]
    assert unknown.status_code == 422 and loc(unknown) == ["body", "colour"]
    assert [e["to_state"] for e in events] == ["shadow"]


def test_a_config_with_an_unknown_parameter_is_422_naming_it_and_stores_no_version(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post(
            "/api/v1/config/strategies/unk", json={"parameters": {"rsi_period": 14}, "changed_by": "t"}
        ).raise_for_status()
        typo = c.post("/api/v1/config/strategies/unk", json={"parameters": {"rsi_periodd": 7}, "changed_by": "t"})
        wrong_type = c.post(
            "/api/v1/config/strategies/unk?symbol=BTCUSDT", json={"parameters": {"rsi_period": "14"}, "changed_by": "t"}
        )
        app = c.post(
            "/api/v1/config/application",
            json={
                "enabled_strategies": ["unk"],
                "symbols": ["BTCUSDT"],
                "candle_periods": ["1h"],
                "changed_by": "t",
                "max_positons": 3,
            },
        )
        declared = c.post(
            "/api/v1/config/strategies/unk",
            json={"parameters": {"rsi_period": 14, "ema": 9}, "changed_by": "t", "declare_parameters": True},
        )
        trail = c.get("/api/v1/config/audit/strategies/unk").json()
    assert typo.status_code == 422 and loc(typo) == ["body", "rsi_periodd"] and "rsi_period" in msg(typo)
    assert wrong_type.status_code == 422 and loc(wrong_type) == ["body", "rsi_period"] and "number" in msg(wrong_type)
    assert app.status_code == 422 and "max_positons" in app.text
    assert declared.status_code == 200 and declared.json()["declared"] == ["ema"]
    assert [t["version"] for t in trail] == [2, 1] and "declared ema" in trail[0]["reason"]


def test_a_rollback_to_a_missing_version_is_404_naming_target_version_and_stores_nothing(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post("/api/v1/config/strategies/rb", json={"parameters": {"a": 1}, "changed_by": "t"})
        missing = c.post("/api/v1/config/rollback/strategies/rb", json={"changed_by": "t", "target_version": 7})
        never = c.post(
            "/api/v1/config/rollback/strategies/never-configured", json={"changed_by": "t", "target_version": 1}
        )
        negative = c.post("/api/v1/config/rollback/strategies/rb", json={"changed_by": "t", "target_version": -1})
        c.request("DELETE", "/api/v1/config/strategies/rb")
        deleted = c.post("/api/v1/config/rollback/strategies/rb", json={"changed_by": "t", "target_version": 2})
        trail = c.get("/api/v1/config/audit/strategies/rb").json()
    assert missing.status_code == 404 and loc(missing) == ["body", "target_version"] and "versions: 1" in msg(missing)
    assert never.status_code == 404 and negative.status_code == 422
    assert deleted.status_code == 409 and "deletion" in msg(deleted)
    assert [t["action"] for t in trail] == ["DELETE", "CREATE"]


def test_malformed_and_stale_cursors_are_422_that_say_which(env: Env) -> None:
    with env.service(ENGINE) as c:
        for i in range(3):
            c.post("/api/v1/trading/positions", json=position(f"cc-{i}", symbol=f"CC{i}USDT"))
        page = c.get("/api/v1/trading/positions", params={"status": "open", "limit": 1}).json()
        good = page["next_cursor"]
        other_query = c.get("/api/v1/trading/positions", params={"status": "closed", "limit": 1, "cursor": good})
        garbage = c.get("/api/v1/trading/positions", params={"status": "open", "cursor": "%%%not-base64"})
        old = json.loads(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
        expired = base64.urlsafe_b64encode(orjson.dumps({**old, "t": old["t"] - 2 * 86_400_000})).decode().rstrip("=")
        stale = c.get("/api/v1/trading/positions", params={"status": "open", "cursor": expired})
        bad_version = base64.urlsafe_b64encode(orjson.dumps({**old, "v": 99})).decode()
        version = c.get("/api/v1/trading/positions", params={"status": "open", "cursor": bad_version})
        bad_status = c.get("/api/v1/trading/positions", params={"status": "opened"})
    assert other_query.status_code == 422 and "stale" in msg(other_query) and loc(other_query) == ["query", "cursor"]
    assert garbage.status_code == 422 and "malformed" in msg(garbage)
    assert stale.status_code == 422 and "24 hours" in msg(stale)
    assert version.status_code == 422 and "another version" in msg(version)
    assert bad_status.status_code == 422 and loc(bad_status) == ["query", "status"]


def test_position_writes_refuse_what_the_engine_must_not_do(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.post("/api/v1/trading/positions", json=position("slot-1", symbol="SLTUSDT")).raise_for_status()
        second_open = c.post("/api/v1/trading/positions", json=position("slot-2", symbol="SLTUSDT"))
        no_id = c.post("/api/v1/trading/positions", json={k: v for k, v in position("x").items() if k != "position_id"})
        unknown = c.post("/api/v1/trading/positions", json={**position("slot-3", symbol="ZZZUSDT"), "leverage_x": 3})
        closed = c.post("/api/v1/trading/positions/slot-1/close", json={"exit_price": "1"})
        reopen = c.patch("/api/v1/trading/positions/slot-1", json={"status": "open"})
        other_close = c.post("/api/v1/trading/positions/slot-1/close", json={"exit_price": "2"})
        bad_date = c.put("/api/v1/trading/daily-pnl/2026-02-30", json={"daily_pnl": 1})
        huge = c.put("/api/v1/trading/daily-pnl/2026-02-10", json={"daily_pnl": "1" * 40})
        empty_new = c.put("/api/v1/trading/positions/slot-4", json={})  # found by tests/test_api_fuzz.py: was a 500
    assert empty_new.status_code == 422 and "missing required field" in msg(empty_new)
    assert second_open.status_code == 422 and "slot-1" in msg(second_open)  # not 409: the engine would read "exists"
    assert no_id.status_code == 422 and loc(no_id) == ["body", "position_id"]
    assert unknown.status_code == 422 and loc(unknown) == ["body", "leverage_x"]
    assert closed.status_code == 200 and reopen.status_code == 409 and other_close.status_code == 409
    assert bad_date.status_code == 422 and huge.status_code == 422
    assert count(env.meta, "SELECT COUNT(*) FROM positions WHERE position_id IN ('slot-2', 'slot-3', 'slot-4')") == 0


# --- service collections: rights and mass mutations --------------------------------------------------


def test_collections_allow_exactly_the_gateway_rights(env: Env) -> None:
    with env.service(TA_BOT) as ta, env.service(ENGINE) as te, env.service(REALTIME) as rs:
        assert (
            ta.put("/api/v1/mongodb/signals", json={"filter": {"symbol": "BTCUSDT"}, "data": {"x": 1}}).status_code
            == 405
        )
        assert (
            ta.request("DELETE", "/api/v1/mongodb/signals", json={"filter": {"symbol": "BTCUSDT"}}).status_code == 405
        )
        assert (
            rs.request(
                "DELETE", "/api/v1/mongodb/strategy_config_audit", json={"filter": {"strategy_id": "a"}}
            ).status_code
            == 405
        )
        assert (
            ta.request(
                "DELETE", "/api/v1/mongodb/characterization_artifacts", json={"filter": {"strategy_id": "a"}}
            ).status_code
            == 405
        )
        assert te.post("/api/v1/mongodb/users", json={"data": {"a": 1}}).status_code == 404
        assert (
            te.post(
                "/api/v1/data/insert", json={"database": "mongodb", "collection": "system.users", "records": [{}]}
            ).status_code
            == 422
        )
        assert te.get("/api/v1/mysql/signals").status_code == 422  # a service collection is addressed as mongodb
        assert (
            te.post("/api/v1/mongodb/signals", json={"data": {"symbol": "BTCUSDT"}}).status_code == 403
        )  # not its scope


def test_loose_and_negation_only_mutations_are_refused_and_change_nothing(env: Env) -> None:
    with env.service(ENGINE) as c:
        for s in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
            c.put("/api/v1/mongodb/leverage_status", json={"filter": {"symbol": s}, "data": {"lev": 1}, "upsert": True})
        negation = c.request(
            "DELETE", "/api/v1/mongodb/leverage_status", json={"filter": {"symbol": {"$ne": "AAAUSDT"}}}
        )
        empty = c.request("DELETE", "/api/v1/mongodb/leverage_status", json={"filter": {}})
        wide = c.put(
            "/api/v1/mongodb/leverage_status",
            json={"filter": {"symbol": {"$in": ["AAAUSDT", "BBBUSDT"]}}, "data": {"lev": 9}},
        )
        allowed = c.put(
            "/api/v1/mongodb/leverage_status",
            json={"filter": {"symbol": {"$in": ["AAAUSDT", "BBBUSDT"]}}, "data": {"lev": 9}, "max_rows": 2},
        )
        too_many = c.put(
            "/api/v1/mongodb/leverage_status",
            json={"filter": {"symbol": "AAAUSDT"}, "data": {"lev": 1}, "max_rows": 100_000},
        )
        young = c.request(
            "DELETE",
            "/api/v1/mongodb/tradeengine_boot_probes",
            json={"filter": {"created_at": {"$lt": dt.datetime.now(dt.UTC).isoformat()}}},
        )
        injected = c.put(
            "/api/v1/mongodb/leverage_status", json={"filter": {"symbol": "AAAUSDT"}, "data": {"$where": "1"}}
        )
        levs = {
            d["symbol"]: d["lev"]
            for d in c.get("/api/v1/mongodb/leverage_status", params={"limit": 100}).json()["data"]
            if "lev" in d
        }
    assert negation.status_code == 422 and "negation" in msg(negation)
    assert empty.status_code == 422 and "filter" in msg(empty)
    assert wide.status_code == 409 and "matches 2" in msg(wide) and "max_rows=1" in msg(wide)
    assert allowed.status_code == 200 and allowed.json()["matched_count"] == 2
    assert too_many.status_code == 422 and loc(too_many) == ["body", "max_rows"]
    assert young.status_code == 422 and "an hour ago" in msg(young)
    assert injected.status_code == 422
    assert levs["CCCUSDT"] == 1 and levs["AAAUSDT"] == 9


def test_documents_are_bounded_and_keys_cannot_be_operators() -> None:
    signals = lookup("signals")
    assert signals is not None
    for bad, why in (
        ({"a": {"$gt": 1}}, "no \\$"),
        ({"a.b": 1}, "no \\$ and no \\."),
        ({"x": float("nan")}, "NaN"),
        ({"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}}, "nested deeper"),
        ({"big": "x" * 70_000}, "KB"),
        ({"timestamp": "not a time"}, "timestamp"),
        ({"_id": {"$ne": 1}}, "_id"),
    ):
        with pytest.raises(ValueProblem, match=why):
            check_document(signals, bad)


# --- pure rules -------------------------------------------------------------------------------------


def test_service_tokens_parse_with_default_scopes_and_never_show_a_token() -> None:
    reg = parse_tokens(
        None,
        None,
        json.dumps({ENGINE: TOKENS[ENGINE], "petrosa-cio": {"token": "cio-token-0123456789", "scopes": ["read"]}}),
    )
    ident = identify(reg, ENGINE, TOKENS[ENGINE])
    assert ident.verified and ident.scopes == DEFAULT_SERVICE_SCOPES[ENGINE]
    assert identify(reg, None, TOKENS[ENGINE]).name == ENGINE  # the token names its service
    assert identify(reg, "petrosa-cio", "cio-token-0123456789").scopes == frozenset({"read"})
    secret = "a-secret-token-0123456789"
    for raw in (
        "{not json",
        json.dumps({"petrosa-cio": secret}),  # an unknown service must name its scopes
        json.dumps({"Bad Name": secret}),
        json.dumps({ENGINE: "short"}),
        json.dumps({ENGINE: {"token": secret, "scopes": ["admin"]}}),
    ):
        with pytest.raises(TokenConfigError) as bad:
            parse_tokens(None, None, raw)
        assert secret not in str(bad.value)


def test_auth_modes_decide() -> None:
    reg = parse_tokens(None, None, json.dumps({ENGINE: TOKENS[ENGINE]}))
    nobody = identify(reg, None, None)
    engine = identify(reg, ENGINE, TOKENS[ENGINE])
    assert not decide(reg, nobody, "pnl:write", "enforce", open_when_unset=False).allowed
    assert decide(reg, nobody, "pnl:write", "audit", open_when_unset=False).reason == "no_token"
    assert decide(reg, nobody, "pnl:write", "off", open_when_unset=False).allowed
    assert decide(reg, engine, "pnl:write", "enforce", open_when_unset=False).reason == "verified"
    assert decide(reg, engine, "config:write", "enforce", open_when_unset=False).status == 403
    unset = parse_tokens(None, None, None)
    assert decide(unset, nobody, "read", "enforce", open_when_unset=True).allowed  # reads open when nothing is set
    assert decide(unset, nobody, "pnl:write", "enforce", open_when_unset=False).status == 403  # writes disabled


def test_parameters_are_checked_against_the_declared_ones() -> None:
    problems, new = against_declared({"a": 1, "b": True}, {}, declare=False)
    assert problems == [] and new == {"a": "number", "b": "bool"}  # the first config declares
    problems, _ = against_declared({"a": "1", "c": 2}, {"a": "number", "b": "bool"}, declare=False)
    assert [p.parameter for p in problems] == ["a", "c"]
    _, new = against_declared({"c": [1]}, {"a": "number"}, declare=True)
    assert new == {"c": "list"}
    for bad in ({}, {"1a": 1}, {"a": float("inf")}, {"a": None}, {f"p{i}": i for i in range(201)}, [1]):
        with pytest.raises(ParamError):
            check_parameters(bad)
    with pytest.raises(ParamError) as err:
        check_app_config(
            {
                "enabled_strategies": ["a"],
                "symbols": ["BTCUSDT"],
                "candle_periods": [],
                "min_confidence": 0.9,
                "max_confidence": 0.5,
            }
        )
    assert err.value.param == "min_confidence"


def test_cursors_round_trip_and_refuse_other_queries() -> None:
    q = {"status": ["open"], "symbol": None, "strategy_id": None}
    cursor = trading.encode_cursor(42, q)
    assert trading.decode_cursor(cursor, q) == 42
    for bad, why in ((cursor, "another query"), ("x" * 600, "longer"), ("bm90IGpzb24", "malformed")):
        with pytest.raises(ParamError, match=why):
            trading.decode_cursor(bad, {**q, "status": ["closed"]} if why == "another query" else q)


# --- racing writers ---------------------------------------------------------------------------------


def test_racing_writers_land_once_each_and_never_answer_5xx(env: Env) -> None:
    """8 transitions from one state: one lands, 7 are 409; 8 config changes: 8 distinct versions; 4 supersedes: one."""
    from concurrent.futures import ThreadPoolExecutor

    with env.service(TA_BOT) as ta, env.service(ENGINE) as te:
        ta.post(
            "/api/v1/strategies/race-1/lifecycle/events",
            json={"from_state": None, "to_state": "shadow", "transitioned_by": "m"},
        )
        ta.post(
            "/api/v1/config/strategies/race-cfg", json={"parameters": {"n": 0}, "changed_by": "t"}
        ).raise_for_status()
        te.post("/api/v1/trading/positions", json=position("race-pos", symbol="RCEUSDT")).raise_for_status()
        _dry_run(te, "race-pos", "dry-race")

        def transition(i: int) -> int:
            body = {"from_state": "shadow", "to_state": "live", "transitioned_by": f"worker-{i}"}
            return ta.post("/api/v1/strategies/race-1/lifecycle/events", json=body).status_code

        def change(i: int) -> int:
            return ta.post(
                "/api/v1/config/strategies/race-cfg", json={"parameters": {"n": i + 1}, "changed_by": f"w{i}"}
            ).status_code

        def supersede(i: int) -> Any:
            body = {
                "id": "race-pos",
                "expected_before": {"status": "open"},
                "reason_code": "phantom_superseded",
                "evidence_ref": "sha256:race",
                "applied_by": f"w{i}",
                "approved_by": "r",
                "dry_run_adjustment_id": "dry-race",
            }
            resp = te.post("/api/v1/ledger/positions/supersede", json=body)
            return resp.status_code, resp.json().get("adjustment_id")

        with ThreadPoolExecutor(8) as pool:
            transitions = list(pool.map(transition, range(8)))
            changes = list(pool.map(change, range(8)))
            supersedes = list(pool.map(supersede, range(4)))
        events = ta.get("/api/v1/strategies/race-1/lifecycle/events").json()["events"]
        versions = [r["version"] for r in ta.get("/api/v1/config/audit/strategies/race-cfg").json()]
    assert sorted(transitions) == [201] + [409] * 7, transitions
    assert [e["to_state"] for e in events] == ["shadow", "live"]
    assert changes == [200] * 8 and sorted(versions) == list(range(1, 10))
    assert {code for code, _ in supersedes} == {200} and len({adj for _, adj in supersedes}) == 1
    applies = [a for a in LedgerStore(env.meta).adjustments(target_key="race-pos") if a["run_mode"] == "apply"]
    assert len(applies) == 1 and verify_chain(LedgerStore(env.meta).chain())
