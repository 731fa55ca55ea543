"""One deterministic order book per symbol: the session's depth diffs and the simulated exchange's snapshots.

Why: prices already come from one path (:mod:`ingest_service.pricepath`), so the generated
websocket klines equal the simulated exchange's REST klines. The order book needs the same:
a REST snapshot (``GET /fapi/v1/depth``) taken at any instant must be exactly the book the
generated ``depthUpdate`` diffs lead to, with a ``lastUpdateId`` inside their ``U``/``u``/``pu``
chain, or a book rebuilt from them never syncs. So the book is a pure function of (market seed,
symbol, tick), and both sides compute it:

* a tick every ``TICK_MS`` (250 ms, the ``@depth@250ms`` stream); tick ``k``'s event carries
  ``u = k``'s update id, ``pu`` = tick ``k - 1``'s, ``U = pu + 1`` (ids are strictly increasing,
  at least 6 apart, deterministic per tick);
* the mid follows the market's 1m kline from open to close; bids and asks sit every ``step``
  below and above it, ``LEVELS`` a side, never crossed; each level's quantity changes every
  ``PERIOD`` ticks at its own phase (some levels empty), so a diff carries a few changes, and the
  levels that leave the window as the mid moves are removed with quantity 0;
* the diff of tick ``k`` is the book of ``k`` against the book of ``k - 1`` (absolute
  quantities, 0 removes), and the snapshot at ``t`` is the book of the last tick at or before
  ``t`` with that tick's id.

Prices are integers in the market's smallest unit (cents), quantities in thousandths, formatted
as Binance's decimal strings.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from dm_resources.intervals import MINUTE_MS
from ingest_service.pricepath import PRICE_DECIMALS, QTY_DECIMALS, Market

TICK_MS = 250
LEVELS = 40
PERIOD = 16  # ticks between two changes of one level's quantity (4 s)
_M64 = (1 << 64) - 1

Side = dict[int, int]  # price (cents) -> quantity (thousandths)


def _mix(*parts: int) -> int:
    """splitmix64 over the parts: a fast, well-spread, process-independent hash of integers."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & _M64)) * 0xBF58476D1CE4E5B9) & _M64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _M64
        h ^= h >> 29
    return h


def _fmt(value: int, decimals: int) -> str:
    q, r = divmod(value, 10**decimals)
    return f"{q}.{r:0{decimals}d}"


def _levels(side: Side, descending: bool) -> list[list[str]]:
    return [[_fmt(p, PRICE_DECIMALS), _fmt(q, QTY_DECIMALS)] for p, q in sorted(side.items(), reverse=descending)]


class BookPath:
    """The order book of every symbol at every tick of ``market``."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.seed = market.seed
        self._minute: dict[str, tuple[int, int, int]] = {}  # symbol -> (minute, open, close)
        self._last: dict[str, tuple[int, Side, Side]] = {}  # symbol -> (tick, bids, asks): sequential reuse

    # -- identity ----------------------------------------------------------------------------
    def _sym(self, symbol: str) -> int:
        return zlib.crc32(symbol.encode())

    def update_id(self, symbol: str, k: int) -> int:
        """``u`` of tick ``k``: strictly increasing in ``k``, consecutive ticks at least 6 apart."""
        return 10 * k + _mix(self.seed, self._sym(symbol), k) % 5

    def event_time(self, symbol: str, k: int) -> int:
        return k * TICK_MS + _mix(self.seed, self._sym(symbol), k, 1) % 4

    def step(self, symbol: str) -> int:
        """Price step between levels: about a hundred-thousandth of the price, a power of ten, at least a cent."""
        ref = self.market.reference_price(symbol)
        return max(1, 10 ** math.floor(math.log10(max(1.0, ref * 1e-5))))

    # -- the book ----------------------------------------------------------------------------
    def mid(self, symbol: str, t: int) -> int:
        """The mid in cents at ``t``: the minute's kline from its open to its close."""
        minute = t - t % MINUTE_MS
        cached = self._minute.get(symbol)
        if cached is None or cached[0] != minute:
            _, cols = self.market.minutes(symbol, minute, minute + MINUTE_MS)
            cached = (minute, int(cols["open"][0]), int(cols["close"][0]))
            self._minute[symbol] = cached
        _, o, c = cached
        return o + (c - o) * (t - minute) // MINUTE_MS

    def book(self, symbol: str, k: int) -> tuple[Side, Side]:
        """Bids and asks at tick ``k`` (never crossed; the best level on each side always present)."""
        last = self._last.get(symbol)
        if last is not None and last[0] == k:
            return last[1], last[2]
        step = self.step(symbol)
        best_bid = max(step, self.mid(symbol, k * TICK_MS) // step * step)
        sym = self._sym(symbol)
        bids: Side = {}
        asks: Side = {}
        for i in range(LEVELS):
            for side, price in ((bids, best_bid - i * step), (asks, best_bid + (i + 1) * step)):
                if price <= 0:
                    continue
                phase = _mix(self.seed, sym, price) % PERIOD
                h = _mix(self.seed, sym, price, (k + phase) // PERIOD)
                if i > 0 and h % 10 == 0:
                    continue  # an empty level
                side[price] = 1 + h % 20_000
        self._last[symbol] = (k, bids, asks)
        return bids, asks

    def diff(self, symbol: str, k: int) -> tuple[Side, Side]:
        """Tick ``k``'s changes against tick ``k - 1``: new absolute quantities, 0 for removed levels."""
        pb, pa = self.book(symbol, k - 1)
        b, a = self.book(symbol, k)
        out: list[Side] = []
        for prev, cur in ((pb, b), (pa, a)):
            changed = {p: q for p, q in cur.items() if prev.get(p) != q}
            changed.update({p: 0 for p in prev if p not in cur})
            out.append(changed)
        return out[0], out[1]

    # -- Binance shapes ----------------------------------------------------------------------
    def depth_update(self, symbol: str, k: int) -> dict[str, Any]:
        """The ``depthUpdate`` payload of tick ``k``."""
        b, a = self.diff(symbol, k)
        e = self.event_time(symbol, k)
        prev = self.update_id(symbol, k - 1)
        return {
            "e": "depthUpdate",
            "E": e,
            "T": e - _mix(self.seed, k, 2) % 3,
            "s": symbol,
            "U": prev + 1,
            "u": self.update_id(symbol, k),
            "pu": prev,
            "b": _levels(b, descending=True),
            "a": _levels(a, descending=False),
        }

    def book_ticker(self, symbol: str, k: int) -> dict[str, Any]:
        """The ``bookTicker`` payload of the book at tick ``k`` (its ``u`` is the tick's update id)."""
        b, a = self.book(symbol, k)
        bid, ask = max(b), min(a)
        e = self.event_time(symbol, k) + 1
        return {
            "e": "bookTicker",
            "u": self.update_id(symbol, k),
            "s": symbol,
            "b": _fmt(bid, PRICE_DECIMALS),
            "B": _fmt(b[bid], QTY_DECIMALS),
            "a": _fmt(ask, PRICE_DECIMALS),
            "A": _fmt(a[ask], QTY_DECIMALS),
            "T": e - 1,
            "E": e,
        }

    def last_tick(self, symbol: str, t: int) -> int:
        """The last tick whose event time is at or before ``t``."""
        k = t // TICK_MS
        return k if self.event_time(symbol, k) <= t else k - 1

    def snapshot(self, symbol: str, t: int, limit: int = 1000) -> dict[str, Any]:
        """``GET /fapi/v1/depth`` at ``t``: the book of the last tick at or before ``t``, with its id."""
        k = self.last_tick(symbol, t)
        b, a = self.book(symbol, k)
        return {
            "lastUpdateId": self.update_id(symbol, k),
            "E": t,
            "T": t - 3,
            "bids": _levels(b, descending=True)[:limit],
            "asks": _levels(a, descending=False)[:limit],
        }

    def envelopes(
        self, symbols: Iterable[str], start_ms: int, end_ms: int, *, skip: Iterable[tuple[str, int]] = ()
    ) -> Iterator[dict[str, Any]]:
        """Combined-stream envelopes (depth update + book ticker) of every tick in ``[start_ms, end_ms)``.

        ``skip`` holds ``(symbol, tick)`` pairs whose depth update is left out: a lost message.
        """
        dropped = set(skip)
        first = -(-start_ms // TICK_MS)
        for k in range(first, -(-end_ms // TICK_MS)):
            for s in symbols:
                if (s, k) not in dropped:
                    yield {"stream": f"{s.lower()}@depth@250ms", "data": self.depth_update(s, k)}
                yield {"stream": f"{s.lower()}@bookTicker", "data": self.book_ticker(s, k)}
