"""The shared facts module: one symbol rule, durations, asset paths."""

from __future__ import annotations

import pytest

from dm_resources.contracts import (
    BACKFILL_ASSET_PATHS,
    CANDLE_INTERVALS,
    candle_asset_path,
    duration_ms,
    is_symbol,
    now_ms,
    validate_symbol,
)
from dm_resources.intervals import INTERVAL_MS


@pytest.mark.parametrize("sym", ["BTCUSDT", "1000PEPEUSDT", "BTCUSDT_251226", "币安人生USDT", "ETHBTC"])
def test_real_futures_symbols_pass(sym: str) -> None:
    assert validate_symbol(sym) == sym


@pytest.mark.parametrize(
    "bad", ["btcusdt", "BTC:USDT", "BTC.USDT", "$BTC", "B", "BTC USDT", "A" * 31, "BTCUSDT_2512", "", None, 5]
)
def test_everything_else_is_refused_with_the_rule(bad: object) -> None:
    assert not is_symbol(bad)
    with pytest.raises(ValueError, match="not a futures symbol"):
        validate_symbol(bad)


def test_durations() -> None:
    assert duration_ms("15m") == 15 * 60_000
    assert duration_ms("4h") == INTERVAL_MS["4h"]
    assert duration_ms("7d") == 7 * 86_400_000 == duration_ms("1w")
    for bad in ("1M", "0m", "m", "15", "1y", "1.5h"):
        with pytest.raises(ValueError):
            duration_ms(bad)


def test_candle_paths_and_backfill_selection() -> None:
    assert candle_asset_path("1m") == ["candles", "candles_1m"]
    with pytest.raises(ValueError, match="built intervals"):
        candle_asset_path("3m")
    assert len(BACKFILL_ASSET_PATHS) == len(CANDLE_INTERVALS) + 3
    assert ["quality", "health_scores"] in BACKFILL_ASSET_PATHS


def test_now_ms_is_epoch_milliseconds() -> None:
    assert 1_700_000_000_000 < now_ms() < 4_000_000_000_000
