"""``make demo``: the platform's services at work — one trade-engine cycle and one audited config change.

The API is served in this process over the demo's stores with service tokens set (enforce
mode, the default), and called exactly as the trade engine and the TA bot call it: their
``X-Petrosa-Service`` header and Bearer token, their paths and bodies, the engine's retry of a
create whose answer was lost.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from typing import Any

import httpx
from pydantic import SecretStr

from dm_resources.settings import Settings

ENGINE, TA_BOT = "petrosa-tradeengine", "petrosa-bot-ta-analysis"


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _short(body: Any, n: int = 160) -> str:
    text = json.dumps(body, separators=(",", ":")) if not isinstance(body, str) else body
    return text if len(text) <= n else text[: n - 1] + "…"


def show_platform(settings: Settings) -> None:
    """Run the trade-engine cycle and the config change against an API with service tokens, printing each step."""
    from api.app import create_app
    from api.testing import serve
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.metadata.write_audit import recent_writes

    tokens = {ENGINE: secrets.token_hex(16), TA_BOT: secrets.token_hex(16)}
    app_settings = settings.model_copy(update={"service_tokens": SecretStr(json.dumps(tokens)), "auth_mode": "enforce"})
    meta = MetadataStore(settings.metadata_url)
    meta.migrate()

    def client(base: str, name: str) -> httpx.Client:
        return httpx.Client(
            base_url=base, headers={"X-Petrosa-Service": name, "Authorization": f"Bearer {tokens[name]}"}, timeout=30
        )

    _say("=" * 70)
    _say("platform services: the trade engine and the TA bot, as their clients call (DM_AUTH_MODE=enforce)")
    with serve(create_app(app_settings, meta=meta)) as base, client(base, ENGINE) as te, client(base, TA_BOT) as ta:
        anonymous = httpx.put(f"{base}/api/v1/trading/daily-pnl/2026-01-01", json={"daily_pnl": 1}, timeout=30)
        why = _short(anonymous.json()["detail"][0]["msg"], 170)
        _say(f"  a write without identity -> {anonymous.status_code}: {why}")
        ready = te.get("/health/readiness").json()
        _say(f"  engine health check: readiness status {ready['status']!r} (state {ready['state']})")

        # -- one trade-engine cycle: create, list, patch, close, daily PnL -----------------------------
        stamp = dt.datetime.now(dt.UTC).strftime("%H%M%S")
        pid = f"demo-{stamp}-{secrets.token_hex(2)}"
        for symbol, side in (("BTCUSDT", "LONG"), ("ETHUSDT", "SHORT")):  # a previous demo's leftovers
            te.post(
                "/api/v1/trading/positions/close-by-side",
                json={"symbol": symbol, "position_side": side, "update": {"close_reason": "demo_reset"}},
            )
        position = {
            "position_id": pid,
            "strategy_id": "momentum_v2",
            "symbol": "BTCUSDT",
            "position_side": "LONG",
            "entry_price": "67012.40",
            "quantity": "0.015",
            "entry_time": dt.datetime.now(dt.UTC).isoformat(),
            "status": "open",
            "entry_commission": "0.40",
        }
        created = te.post("/api/v1/trading/positions", json=position)
        retry = te.post("/api/v1/trading/positions", json=position)
        _say(f"  POST /api/v1/trading/positions {pid} -> {created.status_code} {_short(created.json())}")
        _say(f"  the same POST again (engine retry) -> {retry.status_code}: engine reads 'already exists'; one row")
        hedge = {**position, "position_id": f"{pid}-h", "symbol": "ETHUSDT", "position_side": "SHORT"}
        hedge |= {"entry_price": "3512.20", "quantity": "0.2"}
        te.post("/api/v1/trading/positions", json=hedge).raise_for_status()
        ids: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"status": "open", "limit": 1, **({"cursor": cursor} if cursor else {})}
            page = te.get("/api/v1/trading/positions", params=params).json()
            ids += [p["position_id"] for p in page["data"]]
            pages += 1
            cursor = page["next_cursor"]
            if not cursor:
                break
        _say(f"  GET open positions, 1 per page, following next_cursor: {pages} page(s), {len(ids)} open: {ids[:5]}")
        patched = te.patch(f"/api/v1/trading/positions/{pid}", json={"stop_loss": "66000", "take_profit": "69500"})
        p = patched.json()
        _say(f"  PATCH stop_loss/take_profit -> {patched.status_code}: stop {p['stop_loss']} take {p['take_profit']}")
        close = {"exit_price": "67580.10", "pnl": "8.5155", "close_reason": "take_profit_partial"}
        closed = te.post(f"/api/v1/trading/positions/{pid}/close", json=close)
        again = te.post(f"/api/v1/trading/positions/{pid}/close", json=close)
        row = te.get(f"/api/v1/trading/positions/{pid}").json()
        _say(
            f"  close -> {closed.status_code} {_short(closed.json())}; retried close -> replayed "
            f"{again.json()['replayed']}; stored: status {row['status']}, exit {row['exit_price']}, pnl {row['pnl']}"
        )
        by_side = {"symbol": "ETHUSDT", "position_side": "SHORT", "update": {"exit_price": "3498.00", "pnl": "2.84"}}
        hedge_closed = te.post("/api/v1/trading/positions/close-by-side", json=by_side)
        _say(f"  close-by-side ETHUSDT SHORT -> {hedge_closed.status_code} {_short(hedge_closed.json())}")
        today = dt.datetime.now(dt.UTC).date().isoformat()
        missing = te.get("/api/v1/trading/daily-pnl/2001-01-01").status_code
        te.put(
            f"/api/v1/trading/daily-pnl/{today}",
            json={"daily_pnl": 8.5155, "updated_at": dt.datetime.now(dt.UTC).isoformat()},
        )
        pnl = te.get(f"/api/v1/trading/daily-pnl/{today}").json()
        _say(
            f"  daily PnL: a day without a row -> {missing}; PUT {today} 8.5155 -> GET reads {float(pnl['daily_pnl'])}"
        )

        # -- one config change with its audit trail, and a rollback ----------------------------------------
        sid = f"rsi_extreme_reversal_{stamp}"
        ta.post(
            f"/api/v1/config/strategies/{sid}",
            json={
                "parameters": {"rsi_period": 2, "oversold_threshold": 30},
                "changed_by": "ta-bot",
                "reason": "defaults",
            },
        )
        ta.post(
            f"/api/v1/config/strategies/{sid}",
            json={
                "parameters": {"rsi_period": 2, "oversold_threshold": 20},
                "changed_by": "llm_agent_v1",
                "reason": "volatile market",
            },
        )
        typo = ta.post(
            f"/api/v1/config/strategies/{sid}", json={"parameters": {"oversold_treshold": 10}, "changed_by": "x"}
        )
        _say(f"  a typo'd parameter -> {typo.status_code}: {_short(typo.json()['detail'][0]['msg'], 130)}")
        rolled = ta.post(
            f"/api/v1/config/rollback/strategies/{sid}",
            json={"changed_by": "ops", "target_version": 1, "reason": "revert after drawdown"},
        ).json()
        _say(f"  rollback to version 1 -> now version {rolled['version']}: {rolled['parameters']}")
        _say(f"  audit trail of {sid} (newest first):")
        for rec in ta.get(f"/api/v1/config/audit/strategies/{sid}").json():
            _say(
                f"    v{rec['version']} {rec['action']:<8} by {rec['changed_by']} via {rec['service']}: "
                f"{rec['before']} -> {rec['after']} ({rec['reason']})"
            )
        time.sleep(0.2)  # the write audit rows land after each answer
        for name in (ENGINE, TA_BOT):
            writes = recent_writes(meta, service=name, limit=3)
            shown = "; ".join(f"{w.method} {w.route} -> {w.status}" for w in writes)
            _say(f"  write audit trail, newest 3 by {name}: {shown}")
    meta.close()
