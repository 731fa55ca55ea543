"""Extractor kline records ↔ our raw ``klines`` documents (docs/DATA_MODEL.md).

The klines extractor jobs write records shaped like their old database rows
(``open_price``, ``number_of_trades``, ISO-8601 times …) into ``klines_{interval}``. They
land in the one raw ``klines`` collection, mapped to the fields the websocket and REST
klines already use, with:

* the same deterministic ``_id`` ``SYMBOL:interval:open_time``, so a record that overlaps
  what an extractor (or the websocket, or a REST fill) already stored is a *duplicate*,
  never a second copy — extractors overlap their windows by 30 minutes on purpose;
* prices and volumes as ``Decimal128`` built from the decimal strings (no digit lost);
* ``source: "extractor"`` — the candle assets read every closed 1m kline whatever its
  source, so an extractor's minutes need no REST request (``dm_assets/candles/build.py``);
* **closed klines only**: ``close_time`` must be in the past. A kline still open (or in the
  future) would take the minute's ``_id`` with partial values;
* **the exchange's kline wins**: an extractor's record never replaces a stored kline (a
  duplicate ``_id`` is counted, not written), and the websocket kline that arrives later
  replaces the extractor's (``ingest_service/writer.py``). The exchange is the better source;
* ``close_time`` recomputed as ``open + interval − 1 ms`` (Binance's convention): the
  record's own ``close_time`` is checked to fall inside the bucket, not trusted blindly.

Reading back reverses the mapping, with times as ISO-8601 ``Z`` strings.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128

from api.contract.datasets import KLINE_FIELDS, Dataset, klines_interval
from api.contract.filters import ValueProblem, check_record, epoch_ms, iso_z
from dm_resources.contracts import KLINE_SOURCE_EXTRACTOR, now_ms
from dm_resources.intervals import bucket_start, close_time

SOURCE = KLINE_SOURCE_EXTRACTOR
_EXPONENT_BIAS = 6176
_SIGN_BIT = 1 << 63
_LOW_64 = (1 << 64) - 1


def to_decimal128(value: Decimal) -> Decimal128:
    """``Decimal128(value)``, bit for bit (a test compares them), packed directly: bson's route is ~2x slower.

    A batch of 5,000 klines has 40,000 decimals: their conversion was a third of the insert's CPU.
    """
    sign, digits, exponent = value.as_tuple()
    if isinstance(exponent, int) and -_EXPONENT_BIAS <= exponent <= 6111 and len(digits) <= 34:
        coefficient = int("".join(map(str, digits)))
        high = ((exponent + _EXPONENT_BIAS) << 49) | (coefficient >> 64)
        if sign:
            high |= _SIGN_BIT
        # bson builds a Decimal128 from its (high, low) bit words; its stubs list only the decimal tuple.
        return Decimal128((high, coefficient & _LOW_64))  # type: ignore[arg-type]
    return Decimal128(value)


_DECIMALS = [s for s in KLINE_FIELDS.values() if s.type == "decimal"]
_REQUIRED = [s.name for s in KLINE_FIELDS.values() if s.required]


def to_document(ds: Dataset, record: Any, now: int | None = None) -> dict[str, Any]:
    """One extractor record → one ``klines`` document, or :class:`ValueProblem` saying what is wrong.

    ``now`` (epoch ms, default the clock) is what "closed" is measured against.
    """
    assert ds.interval is not None
    rec = check_record(ds, record)
    missing = [n for n in _REQUIRED if rec.get(n) is None]
    if missing:
        raise ValueProblem(f"missing required field(s): {', '.join(missing)}")
    interval = ds.interval
    sent = rec.get("interval")
    if sent is not None and sent != interval and klines_interval(f"klines_{sent}") != interval:
        raise ValueProblem(f"interval {rec['interval']!r} does not match collection {ds.name!r} ({interval})")
    open_ms = epoch_ms(rec["open_time"])
    if bucket_start(open_ms, interval) != open_ms:
        raise ValueProblem(f"open_time {iso_z(open_ms)} is not the start of a {interval} bucket")
    if rec.get("timestamp") is not None and epoch_ms(rec["timestamp"]) != open_ms:
        raise ValueProblem("timestamp must equal open_time")
    close_ms = close_time(open_ms, interval)
    if rec.get("close_time") is not None and not open_ms <= epoch_ms(rec["close_time"]) <= close_ms:
        raise ValueProblem(f"close_time {iso_z(rec['close_time'])} is outside the bucket of open_time")
    if close_ms >= (now if now is not None else now_ms()):
        raise ValueProblem(
            f"the {interval} kline opening {iso_z(open_ms)} has not closed (it closes at {iso_z(close_ms)}): "
            "only closed klines are accepted"
        )
    o, h, low, c = rec["open_price"], rec["high_price"], rec["low_price"], rec["close_price"]
    if min(o, h, low, c) < 0 or rec["volume"] < 0:
        raise ValueProblem("prices and volume cannot be negative")
    if h < max(o, c, low) or low > min(o, c):
        raise ValueProblem(f"OHLC inconsistent: high {h} / low {low} do not bound open {o} and close {c}")
    trades = rec.get("number_of_trades")
    if trades is not None and trades < 0:
        raise ValueProblem("number_of_trades cannot be negative")
    doc: dict[str, Any] = {
        "_id": f"{rec['symbol']}:{interval}:{open_ms}",
        "symbol": rec["symbol"],
        "interval": interval,
        "open_time": open_ms,
        "close_time": close_ms,
    }
    for spec in _DECIMALS:
        value = rec.get(spec.name)
        doc[spec.store_name] = to_decimal128(value) if value is not None else None
    doc["trades"] = trades
    doc["event_time"] = None
    doc["source"] = SOURCE
    doc["extractor_source"] = rec.get("source")
    doc["extractor_version"] = rec.get("extractor_version")
    extracted = rec.get("extracted_at")
    doc["extracted_at"] = epoch_ms(extracted) if isinstance(extracted, dt.datetime) else None
    return doc


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    return value.to_decimal() if isinstance(value, Decimal128) else Decimal(str(value))


def _str(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def from_document(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored ``klines`` document (any source) in the extractor's shape.

    ``price_change``/``price_change_percent`` are what the extractor sent; for websocket and
    REST klines, which carry neither, they are computed exactly: ``close − open`` and
    ``(close − open) / open × 100``.
    """
    o, c = _dec(doc.get("open")), _dec(doc.get("close"))
    change = _dec(doc.get("price_change"))
    pct = _dec(doc.get("price_change_percent"))
    if change is None and o is not None and c is not None:
        change = c - o
    if pct is None and o and c is not None:
        pct = ((c - o) / o * 100).quantize(Decimal("0.000001"))
    return {
        "symbol": doc.get("symbol"),
        "interval": doc.get("interval"),
        "open_time": iso_z(doc.get("open_time")),
        "close_time": iso_z(doc.get("close_time")),
        "timestamp": iso_z(doc.get("open_time")),
        "open_price": _str(o),
        "high_price": _str(_dec(doc.get("high"))),
        "low_price": _str(_dec(doc.get("low"))),
        "close_price": _str(c),
        "volume": _str(_dec(doc.get("volume"))),
        "quote_asset_volume": _str(_dec(doc.get("quote_volume"))),
        "taker_buy_base_asset_volume": _str(_dec(doc.get("taker_buy_volume"))),
        "taker_buy_quote_asset_volume": _str(_dec(doc.get("taker_buy_quote_volume"))),
        "price_change": _str(change),
        "price_change_percent": _str(pct),
        "number_of_trades": doc.get("trades"),
        "source": doc.get("source"),
        "extractor_version": doc.get("extractor_version"),
        "extracted_at": iso_z(doc.get("extracted_at")),
    }
