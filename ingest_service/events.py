"""Binance futures events: decode the combined-stream envelope, validate, map to DATA_MODEL.md documents.

Pure functions, no I/O, so every rule here is tested without a server.

* Validation is strict (pydantic ``strict=True``): a price sent as a JSON number or a
  time sent as a string is a *mistyped field*, not something to coerce. A price that
  reached us as a float may already have lost digits, so it must not be stored as if exact.
* Prices and quantities become ``Decimal128`` built from the exchange's decimal
  string: 34 significant digits, nothing lost.
* Unknown keys are ignored: Binance adds keys to payloads over time.
* ``_id``s are deterministic (see DATA_MODEL.md) so a redelivered or replayed event
  is written once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from bson.binary import Binary
from bson.decimal128 import Decimal128
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

_DECIMAL_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# Upper case, no separator used in ``_id``s; not only ASCII: Binance lists symbols such as "币安人生USDT".
_SYMBOL_RE = re.compile(r"^[^\s:$.a-z]{2,40}$")


def to_decimal128(value: object) -> Decimal128:
    """A Binance decimal string as Decimal128; anything else (a float, NaN, 40 digits) is refused."""
    if not isinstance(value, str):
        raise ValueError(f"expected a decimal string, got {type(value).__name__}")
    if not _DECIMAL_RE.match(value):
        raise ValueError(f"{value[:40]!r} is not a decimal number")
    try:
        return Decimal128(value)
    except Exception as exc:  # decimal.Inexact / Overflow from bson's strict context
        raise ValueError(f"{value[:40]!r} does not fit Decimal128 exactly") from exc


def _symbol(value: object) -> str:
    if not isinstance(value, str) or not _SYMBOL_RE.match(value):
        raise ValueError(f"{str(value)[:40]!r} is not an upper-case Binance symbol")
    return value


def _optional_decimal(value: object) -> Decimal128 | None:
    """Funding fields are ``""`` for contracts without funding (delivery futures)."""
    if value == "" or value is None:
        return None
    return to_decimal128(value)


Dec = Annotated[Decimal128, PlainValidator(to_decimal128)]
OptDec = Annotated[Decimal128 | None, PlainValidator(_optional_decimal)]
Sym = Annotated[str, PlainValidator(_symbol)]
# JSON arrays are lists; strict mode would refuse them as tuples.
Level = Annotated[list[Dec], Field(min_length=2, max_length=2)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, arbitrary_types_allowed=True, frozen=True)

    event_time: int = Field(alias="E")
    symbol: Sym = Field(alias="s")


class AggTrade(_Event):
    agg_id: int = Field(alias="a")
    price: Dec = Field(alias="p")
    qty: Dec = Field(alias="q")
    first_trade_id: int = Field(alias="f")
    last_trade_id: int = Field(alias="l")
    trade_time: int = Field(alias="T")
    buyer_is_maker: bool = Field(alias="m")


class KlineBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, arbitrary_types_allowed=True, frozen=True)

    open_time: int = Field(alias="t")
    close_time: int = Field(alias="T")
    interval: str = Field(alias="i")
    open: Dec = Field(alias="o")
    close: Dec = Field(alias="c")
    high: Dec = Field(alias="h")
    low: Dec = Field(alias="l")
    volume: Dec = Field(alias="v")
    trades: int = Field(alias="n")
    closed: bool = Field(alias="x")
    quote_volume: Dec = Field(alias="q")
    taker_buy_volume: Dec = Field(alias="V")
    taker_buy_quote_volume: Dec = Field(alias="Q")


class Kline(_Event):
    k: KlineBody


class DepthUpdate(_Event):
    transaction_time: int = Field(alias="T")
    first_update_id: int = Field(alias="U")
    final_update_id: int = Field(alias="u")
    prev_final_update_id: int = Field(alias="pu")
    bids: list[Level] = Field(alias="b")
    asks: list[Level] = Field(alias="a")


class Ticker24h(_Event):
    price_change: Dec = Field(alias="p")
    price_change_percent: Dec = Field(alias="P")
    weighted_avg_price: Dec = Field(alias="w")
    last_price: Dec = Field(alias="c")
    last_qty: Dec = Field(alias="Q")
    open_price: Dec = Field(alias="o")
    high_price: Dec = Field(alias="h")
    low_price: Dec = Field(alias="l")
    volume: Dec = Field(alias="v")
    quote_volume: Dec = Field(alias="q")
    open_time: int = Field(alias="O")
    close_time: int = Field(alias="C")
    first_trade_id: int = Field(alias="F")
    last_trade_id: int = Field(alias="L")
    trade_count: int = Field(alias="n")


class BookTicker(_Event):
    update_id: int = Field(alias="u")
    transaction_time: int = Field(alias="T")
    bid_price: Dec = Field(alias="b")
    bid_qty: Dec = Field(alias="B")
    ask_price: Dec = Field(alias="a")
    ask_qty: Dec = Field(alias="A")


class MarkPriceUpdate(_Event):
    mark_price: Dec = Field(alias="p")
    index_price: Dec = Field(alias="i")
    estimated_settle_price: Dec = Field(alias="P")
    funding_rate: OptDec = Field(alias="r")
    next_funding_time: int = Field(alias="T")


EVENT_MODELS: dict[str, type[_Event]] = {
    "aggTrade": AggTrade,
    "kline": Kline,
    "depthUpdate": DepthUpdate,
    "24hrTicker": Ticker24h,
    "bookTicker": BookTicker,
    "markPriceUpdate": MarkPriceUpdate,
}
EVENT_TYPES = tuple(EVENT_MODELS)


@dataclass(slots=True)
class Decoded:
    """What one message became: documents per collection, or the reason it is a dead letter.

    ``docs`` is empty and ``error`` None for a valid message that stores nothing
    (an open kline): it is acked like any other.
    """

    event_type: str | None = None
    symbol: str | None = None
    docs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        if err["type"] == "missing":
            parts.append(f"missing field {loc!r}")
        else:
            parts.append(f"field {loc!r}: {err['msg'].removeprefix('Value error, ')}")
    more = exc.error_count() - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def agg_trade_doc(ev: AggTrade) -> dict[str, Any]:
    return {
        "_id": f"{ev.symbol}:{ev.agg_id}",
        "symbol": ev.symbol,
        "agg_id": ev.agg_id,
        "price": ev.price,
        "qty": ev.qty,
        "first_trade_id": ev.first_trade_id,
        "last_trade_id": ev.last_trade_id,
        "trade_time": ev.trade_time,
        "event_time": ev.event_time,
        "buyer_is_maker": ev.buyer_is_maker,
    }


def kline_doc(ev: Kline, source: str = "ws") -> dict[str, Any]:
    k = ev.k
    return {
        "_id": f"{ev.symbol}:{k.interval}:{k.open_time}",
        "symbol": ev.symbol,
        "interval": k.interval,
        "open_time": k.open_time,
        "close_time": k.close_time,
        "open": k.open,
        "high": k.high,
        "low": k.low,
        "close": k.close,
        "volume": k.volume,
        "quote_volume": k.quote_volume,
        "trades": k.trades,
        "taker_buy_volume": k.taker_buy_volume,
        "taker_buy_quote_volume": k.taker_buy_quote_volume,
        "event_time": ev.event_time,
        "source": source,
    }


def depth_doc(ev: DepthUpdate) -> dict[str, Any]:
    return {
        "_id": f"{ev.symbol}:{ev.final_update_id}",
        "symbol": ev.symbol,
        "event_time": ev.event_time,
        "transaction_time": ev.transaction_time,
        "first_update_id": ev.first_update_id,
        "final_update_id": ev.final_update_id,
        "prev_final_update_id": ev.prev_final_update_id,
        "bids": [[p, q] for p, q in ev.bids],
        "asks": [[p, q] for p, q in ev.asks],
    }


def ticker_doc(ev: Ticker24h) -> dict[str, Any]:
    return {
        "_id": f"{ev.symbol}:{ev.event_time}",
        "symbol": ev.symbol,
        "event_time": ev.event_time,
        "price_change": ev.price_change,
        "price_change_percent": ev.price_change_percent,
        "weighted_avg_price": ev.weighted_avg_price,
        "last_price": ev.last_price,
        "last_qty": ev.last_qty,
        "open_price": ev.open_price,
        "high_price": ev.high_price,
        "low_price": ev.low_price,
        "volume": ev.volume,
        "quote_volume": ev.quote_volume,
        "open_time": ev.open_time,
        "close_time": ev.close_time,
        "first_trade_id": ev.first_trade_id,
        "last_trade_id": ev.last_trade_id,
        "trade_count": ev.trade_count,
    }


def book_ticker_doc(ev: BookTicker) -> dict[str, Any]:
    return {
        "_id": f"{ev.symbol}:{ev.update_id}",
        "symbol": ev.symbol,
        "update_id": ev.update_id,
        "event_time": ev.event_time,
        "transaction_time": ev.transaction_time,
        "bid_price": ev.bid_price,
        "bid_qty": ev.bid_qty,
        "ask_price": ev.ask_price,
        "ask_qty": ev.ask_qty,
    }


def mark_price_doc(ev: MarkPriceUpdate) -> dict[str, Any]:
    return {
        "_id": f"{ev.symbol}:{ev.event_time}",
        "symbol": ev.symbol,
        "event_time": ev.event_time,
        "mark_price": ev.mark_price,
        "index_price": ev.index_price,
        "estimated_settle_price": ev.estimated_settle_price,
        "funding_rate": ev.funding_rate,
        "next_funding_time": ev.next_funding_time,
    }


def funding_doc(ev: MarkPriceUpdate) -> dict[str, Any] | None:
    """The funding record this update proposes for its next funding time ``T``.

    Rule: one record per symbol per funding time; of all updates that announce the
    same ``T``, the one with the largest event time wins (it is the last rate seen
    before ``T``, the one that settles). The writer enforces "largest wins" in the
    store, so the outcome does not depend on delivery order or replicas.
    Contracts without funding (``r`` empty or ``T`` 0) propose nothing.
    """
    if ev.funding_rate is None or ev.next_funding_time <= 0:
        return None
    return {
        "_id": f"{ev.symbol}:{ev.next_funding_time}",
        "symbol": ev.symbol,
        "funding_time": ev.next_funding_time,
        "funding_rate": ev.funding_rate,
        "mark_price": ev.mark_price,
        "event_time": ev.event_time,
    }


def _documents(event_type: str, ev: _Event) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(ev, AggTrade):
        return [("agg_trades", agg_trade_doc(ev))]
    if isinstance(ev, Kline):
        return [("klines", kline_doc(ev))] if ev.k.closed else []
    if isinstance(ev, DepthUpdate):
        return [("depth_updates", depth_doc(ev))]
    if isinstance(ev, Ticker24h):
        return [("tickers", ticker_doc(ev))]
    if isinstance(ev, BookTicker):
        return [("book_tickers", book_ticker_doc(ev))]
    if isinstance(ev, MarkPriceUpdate):
        out = [("mark_prices", mark_price_doc(ev))]
        fund = funding_doc(ev)
        if fund is not None:
            out.append(("funding_rates", fund))
        return out
    raise AssertionError(f"no mapping for {event_type}")  # pragma: no cover


def decode(raw: bytes) -> Decoded:
    """One NATS message payload → documents, or a dead-letter reason. Never raises."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Decoded(error=f"invalid JSON: {exc}")
    if not isinstance(obj, dict):
        return Decoded(error=f"envelope is a JSON {type(obj).__name__}, not an object")
    # Combined-stream envelope {"stream": ..., "data": {...}}; a bare payload (a
    # single-stream connection) is accepted too, it carries the same fields.
    data = obj.get("data", obj)
    if not isinstance(data, dict):
        return Decoded(error="envelope 'data' is not an object")
    event_type = data.get("e")
    sym = data.get("s")
    symbol = sym if isinstance(sym, str) else None
    if not isinstance(event_type, str):
        return Decoded(symbol=symbol, error="missing field 'e' (event type)")
    model = EVENT_MODELS.get(event_type)
    if model is None:
        return Decoded(event_type=event_type[:64], symbol=symbol, error=f"unknown event type {event_type[:64]!r}")
    try:
        ev = model.model_validate(data)
    except ValidationError as exc:
        return Decoded(event_type=event_type, symbol=symbol, error=_validation_reason(exc))
    return Decoded(event_type=event_type, symbol=ev.symbol, docs=_documents(event_type, ev))


def dead_letter_doc(
    stream_seq: int,
    subject: str,
    raw: bytes,
    reason: str,
    received_at_ms: int,
    event_type: str | None = None,
    symbol: str | None = None,
) -> dict[str, Any]:
    """``_id`` is the JetStream stream sequence, so a redelivered bad message is recorded once."""
    return {
        "_id": f"dl:{stream_seq}",
        "symbol": symbol,
        "received_at": received_at_ms,
        "subject": subject,
        "raw": Binary(raw),
        "reason": reason,
        "event_type": event_type,
        "stream_seq": stream_seq,
    }


def newest_funding(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep, per ``_id``, the proposal with the largest event time (the funding rule, within a batch)."""
    best: dict[str, dict[str, Any]] = {}
    for d in docs:
        cur = best.get(d["_id"])
        if cur is None or d["event_time"] > cur["event_time"]:
            best[d["_id"]] = d
    return list(best.values())
