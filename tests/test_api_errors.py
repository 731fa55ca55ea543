"""One error type with one body shape (api/errors.py), and one definition of each platform row."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI, Query

from api import errors
from api.contract.auth import ScopeDenied, authorize, parse_tokens
from api.contract.datasets import DAILY_PNL_FIELDS, POSITION_FIELDS
from api.contract.rows import DailyPnl, Position
from api.errors import ApiError, AuthError, UpstreamError
from api.params import ParamError
from api.testing import serve
from dm_resources.metadata.platform import TABLES, public_columns


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(errors.Unhandled)
    errors.install(app)

    @app.get("/param")
    def param() -> None:
        raise ParamError("pair", "'X' is not a known pair", status=404)

    @app.get("/auth")
    def auth() -> None:
        authorize(parse_tokens(None, "legacy-token"), None, "read")

    @app.get("/upstream")
    def upstream() -> None:
        raise UpstreamError(503, "Dagster is not reachable")

    @app.get("/bug")
    def bug() -> None:
        raise RuntimeError("a bug of ours")

    @app.get("/typed")
    def typed(n: int = Query()) -> int:
        return n

    return app


@pytest.fixture(scope="module")
def http() -> httpx.Client:
    with serve(_app()) as url, httpx.Client(base_url=url) as client:
        yield client  # type: ignore[misc]  # a generator fixture


def test_every_api_error_answers_the_same_shape_naming_where(http: httpx.Client) -> None:
    cases = {
        "/param": (404, ["query", "pair"], "not_found"),
        "/auth": (401, ["header", "Authorization"], "auth"),
        "/upstream": (503, ["dagster"], "upstream"),
        "/bug": (500, ["server"], "internal"),
    }
    for path, (status, loc, kind) in cases.items():
        resp = http.get(path)
        assert resp.status_code == status, (path, resp.text)
        (item,) = resp.json()["detail"]
        assert item["loc"] == loc and item["type"] == kind and item["msg"], (path, item)
    assert http.get("/auth").headers["WWW-Authenticate"] == "Bearer"
    assert "RuntimeError" in http.get("/bug").json()["detail"][0]["msg"]


def test_auth_scope_and_upstream_errors_are_one_type() -> None:
    assert ScopeDenied is AuthError
    for exc in (ParamError("x", "m"), AuthError(401, "m"), UpstreamError(502, "m")):
        assert isinstance(exc, ApiError)


def test_a_validation_error_does_not_echo_a_huge_input(http: httpx.Client) -> None:
    resp = http.get("/typed", params={"n": "9" * 5000 + "x"})
    assert resp.status_code == 422
    (item,) = resp.json()["detail"]
    assert item["loc"] == ["query", "n"] and len(item["input"]) <= errors.ECHO_CHARS + 1


def test_each_platform_row_is_defined_once_by_its_table() -> None:
    """Fields, validation and response models all come from the table's columns."""
    for table, fields, model in (("positions", POSITION_FIELDS, Position), ("daily_pnl", DAILY_PNL_FIELDS, DailyPnl)):
        assert list(fields) == public_columns(table)
        assert list(model.model_fields) == public_columns(table)
        for name, info in model.model_fields.items():
            assert info.is_required() == (not TABLES[table].c[name].nullable), name
    assert POSITION_FIELDS["symbol"].type == "symbol" and POSITION_FIELDS["entry_trade_ids"].type == "list"
    assert [n for n, f in POSITION_FIELDS.items() if f.required] == ["symbol", "position_side"]
    assert [n for n, f in DAILY_PNL_FIELDS.items() if f.required] == ["date", "daily_pnl"]
    now = dt.datetime.now(dt.UTC)
    row = DailyPnl.model_validate(
        {
            "date": dt.date(2026, 1, 2),
            "daily_pnl": Decimal("1.500000000000000000"),
            "created_at": now,
        }
    )
    assert row.model_dump(mode="json")["daily_pnl"] == "1.5"
    with pytest.raises(ValueError, match="status"):
        Position.model_validate(
            {
                "position_id": "p",
                "symbol": "BTCUSDT",
                "position_side": "LONG",
                "status": "half-open",
                "created_at": now,
            }
        )
