"""The /api/v1 contract's plain functions: dataset resolution, typed filters, kline mapping, token scopes."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from bson.decimal128 import Decimal128
from pydantic import SecretStr

from api.app import create_app
from api.contract.auth import ScopeDenied, TokenConfigError, authorize, parse_tokens
from api.contract.datasets import klines_interval, resolve
from api.contract.filters import (
    ValueProblem,
    check_page,
    check_update_data,
    iso_z,
    parse_fields,
    parse_filter,
    parse_sort,
    to_decimal,
)
from api.contract.klines import from_document, to_document
from api.contract.service import check_platform_values, decimal_str
from api.deps import ApiSettings
from api.params import ParamError
from api.routes.health import missing_table_hint
from dm_resources.metadata.platform import Cond
from dm_resources.settings import load_settings

T0 = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("name", "interval"),
    [
        ("klines_15m", "15m"),
        ("klines_m15", "15m"),
        ("klines_h1", "1h"),
        ("klines_4h", "4h"),
        ("klines_d1", "1d"),
        ("klines_1M", "1M"),
        ("klines_1w", "1w"),
        ("klines_1s", None),  # spot only
        ("klines_7m", None),
        ("klines_", None),
        ("klines_15m/../admin", None),
    ],
)
def test_klines_collection_names(name: str, interval: str | None) -> None:
    assert klines_interval(name) == interval


def test_resolve_checks_the_database_and_lists_the_allowed_collections() -> None:
    assert resolve("positions", "mysql").store == "positions"
    assert resolve("klines_m15", "mongodb").interval == "15m"
    assert resolve("trades", "mongodb").store == "agg_trades" and resolve("funding").store == "funding_rates"
    with pytest.raises(ParamError) as info:
        resolve("admin", "mongodb")
    assert info.value.status == 404 and "positions, daily_pnl" in info.value.message
    with pytest.raises(ParamError) as info:
        resolve("users", "mongodb", where="body")
    assert info.value.status == 422 and info.value.where == "body"
    with pytest.raises(ParamError, match="lives in database 'mongodb'"):
        resolve("klines_1m", "mysql")


def test_filters_are_typed_per_field() -> None:
    positions = resolve("positions")
    conds = parse_filter(
        positions,
        {
            "symbol": "BTCUSDT",
            "entry_price": {"$gte": "100.5", "$lt": 200},
            "entry_time": {"$gt": "2026-03-01T00:00:00"},
            "status": {"$in": ["open", "closed"]},
            "close_reason": {"$ne": None},
        },
    )
    assert conds == [
        Cond("symbol", "eq", "BTCUSDT"),
        Cond("entry_price", "gte", Decimal("100.5")),
        Cond("entry_price", "lt", Decimal(200)),
        Cond("entry_time", "gt", dt.datetime(2026, 3, 1, tzinfo=dt.UTC)),
        Cond("status", "in", ("open", "closed")),
        Cond("close_reason", "ne", None),
    ]
    for bad in (
        {"symbol": "btcusdt"},  # symbols are upper case
        {"entry_price": True},
        {"duration_seconds": "3"},
        {"entry_price": {"$gt": None}},
        {"status": {"$in": []}},
        {"status": {"$in": ["x"] * 501}},
        {"symbol": {}},
        "symbol=BTCUSDT",
    ):
        with pytest.raises(ParamError):
            parse_filter(positions, bad)
    assert parse_sort(positions, {"entry_time": -1, "symbol": 1}) == [("entry_time", -1), ("symbol", 1)]
    for bad_sort in ({"entry_time": 2}, {"entry_time": True}, {"metadata": 1}, {"$natural": 1}):
        with pytest.raises(ParamError):
            parse_sort(positions, bad_sort)


def test_page_limits_are_named() -> None:
    assert check_page(None, None) == (100, 0)
    with pytest.raises(ParamError, match=r"1\.\.5000"):
        check_page(0, 0)
    with pytest.raises(ParamError, match=r"0\.\.100000"):
        check_page(10, -1)


def test_decimals_are_exact_or_refused() -> None:
    assert to_decimal("27123.123456789012345678") == Decimal("27123.123456789012345678")
    assert to_decimal(0.1) == Decimal("0.1")  # a JSON float's shortest repr, not its binary expansion
    for bad in ("nan", "1e", "", "1" * 35, float("inf"), [1]):
        with pytest.raises(ValueProblem):
            to_decimal(bad)
    assert decimal_str(Decimal("50000.000000000000000000")) == "50000"
    assert decimal_str(Decimal("-0.000000000000000000")) in ("0", "-0")
    assert decimal_str(Decimal("1E+2")) == "100"


def _record(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "symbol": "BTCUSDT",
        "interval": "15m",
        "open_time": iso_z(T0),
        "close_time": iso_z(T0 + 899_999),
        "open_price": "100",
        "high_price": "110",
        "low_price": "95",
        "close_price": "105",
        "volume": "3.5",
        "quote_asset_volume": "350",
        "taker_buy_base_asset_volume": "1.5",
        "taker_buy_quote_asset_volume": "150",
        "number_of_trades": 7,
    }
    base.update(kw)
    return base


def test_kline_records_map_to_our_documents_and_back() -> None:
    ds = resolve("klines_m15")
    doc = to_document(ds, _record(interval="m15"))
    assert doc["_id"] == f"BTCUSDT:15m:{T0}" and doc["close_time"] == T0 + 899_999
    assert doc["open"] == Decimal128("100") and doc["source"] == "extractor" and doc["trades"] == 7
    back = from_document(doc)
    assert back["close_time"] == "2026-03-01T00:14:59.999Z" and back["open_price"] == "100"
    assert back["price_change"] == "5" and back["price_change_percent"] == "5.000000"
    # A websocket kline reads the same way.
    ws = {**doc, "source": "ws", "price_change": None, "price_change_percent": None}
    assert from_document(ws)["source"] == "ws" and from_document(ws)["price_change"] == "5"
    for bad, why in (
        (_record(open_time=iso_z(T0 + 60_000)), "not the start"),
        (_record(close_time=iso_z(T0 + 900_000)), "outside the bucket"),
        (_record(timestamp=iso_z(T0 + 1)), "timestamp"),
        (_record(low_price="101"), "OHLC"),
        (_record(volume="-1"), "negative"),
        (_record(number_of_trades=-1), "negative"),
        (_record(number_of_trades="7"), "integer"),
        (_record(open_price=None), "missing"),
        (_record(taker_buy_quote_asset_volume=None), "missing"),
        (_record(interval="1h"), "does not match"),
    ):
        with pytest.raises(ValueProblem, match=why):
            to_document(ds, bad)


def test_token_scopes() -> None:
    engine, extractor = "engine-0123456789abcdef", "extractor-0123456789abc"
    reg = parse_tokens(json.dumps({engine: ["positions:write", "pnl:write"], extractor: "klines:write,read"}), "legacy")
    assert reg.scopes(engine) == frozenset({"positions:write", "pnl:write"})
    assert reg.scopes(extractor) == frozenset({"klines:write", "read"})
    assert reg.scopes("legacy") == frozenset({"*"}) and reg.scopes("other") is None
    authorize(reg, "legacy", "klines:write")
    authorize(reg, engine, "pnl:write")
    with pytest.raises(ScopeDenied) as denied:
        authorize(reg, extractor, "positions:write")
    assert denied.value.status == 403 and extractor not in denied.value.message
    with pytest.raises(ScopeDenied) as missing:
        authorize(reg, None, "read")
    assert missing.value.status == 401
    with pytest.raises(ScopeDenied) as disabled:
        authorize(parse_tokens(None, None), engine, "read")
    assert disabled.value.status == 403 and "disabled" in disabled.value.message
    secret = "a-secret-token-0123456789"
    for raw in ("{not json", "[1]", json.dumps({"short": ["read"]}), json.dumps({secret: ["admin"]})):
        with pytest.raises(TokenConfigError) as bad:
            parse_tokens(raw)
        assert secret not in str(bad.value)


def test_a_malformed_token_setting_stops_the_app_at_start_and_is_never_shown() -> None:
    secret = "a-secret-token-0123456789"
    api = ApiSettings(tokens=SecretStr(json.dumps({secret: ["everything"]})))
    assert secret not in repr(api)
    with pytest.raises(TokenConfigError) as info:
        create_app(load_settings(), api_settings=api)
    assert secret not in str(info.value) and "unknown scope" in str(info.value)


def test_sql_values_must_fit_their_columns() -> None:
    positions, pnl = resolve("positions"), resolve("daily_pnl")
    check_platform_values(positions, {"position_id": "p" * 64, "entry_price": Decimal("12345678901234567890.5")})
    for values, why in (
        ({"position_id": "p" * 65}, "longer than 64"),
        ({"commission_asset": "X" * 17}, "longer than 16"),
        ({"entry_price": Decimal("0.0000000000000000001")}, "more than 18 decimal places"),
        ({"quantity": Decimal("123456789012345678901")}, "more than 20 integer digits"),
        ({"status": "pending"}, "status"),
        ({"position_side": "long"}, "position_side"),
    ):
        with pytest.raises(ValueProblem, match=why):
            check_platform_values(positions, values)
    with pytest.raises(ValueProblem, match="decimal places"):
        check_platform_values(pnl, {"daily_pnl": Decimal("1e-19")})
    # Trailing zeros are not digits lost: a price formatted with 20 places fits DECIMAL(38, 18) exactly.
    check_platform_values(positions, {"entry_price": Decimal("27123.50000000000000000000"), "pnl": Decimal("0E-25")})
    with pytest.raises(ValueProblem, match="decimal places"):
        check_platform_values(positions, {"entry_price": Decimal("27123.12345678901234567890")})


def test_missing_table_errors_are_recognised_per_backend() -> None:
    class Orig(Exception):
        pass

    class Wrapped(Exception):
        def __init__(self, orig: Exception) -> None:
            super().__init__(str(orig))
            self.orig = orig

    assert "upgrade" in (missing_table_hint(Wrapped(Orig("no such table: positions"))) or "")
    assert "upgrade" in (missing_table_hint(Wrapped(Orig(1146, "Table 'db.positions' doesn't exist"))) or "")
    assert "upgrade" in (missing_table_hint(Wrapped(Orig('relation "positions" does not exist'))) or "")
    assert missing_table_hint(Wrapped(Orig(2003, "Can't connect to MySQL server"))) is None
    assert missing_table_hint(Wrapped(Orig())) is None


def test_more_refusals_of_the_declared_subset() -> None:
    positions = resolve("positions")
    too_many = {f: "x" for f in ("strategy_id", "exchange", "status", "close_reason")}
    too_many.update({f"x{i}": 1 for i in range(40)})
    with pytest.raises(ParamError, match="at most 32 fields"):
        parse_filter(positions, too_many)
    with pytest.raises(ParamError, match="at most 4 sort fields"):
        parse_sort(positions, {f: 1 for f in ("symbol", "status", "exchange", "strategy_id", "entry_time")})
    with pytest.raises(ParamError, match="unknown field 'password'"):
        parse_fields(positions, "symbol,password")
    assert parse_fields(positions, "symbol,status,symbol") == ["symbol", "status"]
    for flt, why in (
        ({"strategy_id": "s" * 256}, "longer than 255"),
        ({"entry_time": 2**60}, "outside epoch ms"),
        ({"entry_time": True}, "boolean"),
        ({"symbol": 5}, "expected a string"),
    ):
        with pytest.raises(ParamError, match=why):
            parse_filter(positions, flt)
    with pytest.raises(ParamError, match="not a calendar date"):
        parse_filter(resolve("daily_pnl"), {"date": "2026-02-30"})
    trades = resolve("agg_trades")
    for flt, why in (
        ({"agg_id": 2**63}, "64-bit"),
        ({"buyer_is_maker": "yes"}, "true or false"),
        ({"agg_id": {"$in": [1, None]}}, "cannot be null"),
    ):
        with pytest.raises(ParamError, match=why):
            parse_filter(trades, flt)
    with pytest.raises(TokenConfigError, match="non-empty list"):
        parse_tokens(json.dumps({"a-token-of-sixteen-chars": []}))
    with pytest.raises(ParamError, match=r"\$set must be a non-empty object"):
        check_update_data(positions, {"$set": "closed"})
    with pytest.raises(ParamError, match="non-empty object"):
        check_update_data(positions, {})
