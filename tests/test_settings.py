"""Settings fail fast with a message that names the variable and the bad value."""

from __future__ import annotations

import datetime as dt

import pytest

from dm_resources.settings import Settings, SettingsError, load_settings


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DM_NATS_URL", "DM_MONGO_URL", "DM_METADATA_URL", "DM_SYMBOLS", "DM_NATS_SUBJECT"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.nats_subject == "binance.futures.websocket.data"
    assert s.metadata_url.startswith("sqlite:///")
    assert s.binance_rest_url == "https://fapi.binance.com"
    assert s.symbols == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def test_env_values_are_read_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DM_SYMBOLS", " btcusdt, ETHUSDT ,btcusdt")
    monkeypatch.setenv("DM_MONGO_URL", "mongodb://db.example:27017")
    monkeypatch.setenv("DM_METADATA_URL", "mysql+pymysql://u:p@h/meta")
    monkeypatch.setenv("DM_BINANCE_REST_URL", "http://127.0.0.1:9999/")
    monkeypatch.setenv("DM_PARTITION_START", "2025-06-01")
    s = load_settings()
    assert s.symbols == ["BTCUSDT", "ETHUSDT"]
    assert s.binance_rest_url == "http://127.0.0.1:9999"
    assert s.partition_start == dt.date(2025, 6, 1)


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("DM_MONGO_URL", "postgres://x", "mongodb://"),
        ("DM_NATS_URL", "http://127.0.0.1:4222", "nats://"),
        ("DM_METADATA_URL", "not a url", "SQLAlchemy URL"),
        ("DM_METADATA_URL", "oracle://u@h/db", "backend must be"),
        ("DM_SYMBOLS", "BTC-USDT", "not a futures symbol"),
        ("DM_SYMBOLS", " , ", "at least one symbol"),
        ("DM_BINANCE_REST_URL", "fapi.binance.com", "http://"),
        ("DM_NATS_SUBJECT", "a b", "NATS subject"),
        ("DM_MONGO_DB", "my.db", "MongoDB database name"),
        ("DM_PARTITION_START", "yesterday", "date"),
    ],
)
def test_bad_setting_names_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert f"{var}={value!r}" in message
    assert fragment in message


def test_settings_are_immutable() -> None:
    s = Settings()
    with pytest.raises(Exception, match="frozen"):
        s.mongo_db = "other"  # type: ignore[misc]
