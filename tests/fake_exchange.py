"""The one fake: a Binance USD-M futures REST server over real HTTP on loopback.

Why it looks like this:

* **Deterministic market.** Every 1m kline is a pure function of (seed, symbol,
  open_time): a daily anchor price follows a seeded random walk over days, and each
  day's minutes follow a seeded Brownian bridge from that day's anchor to the next
  day's, so a minute's close is exactly the next minute's open. Numbers are integers
  in the smallest unit (price 2 decimals, quantity 3, quote 5) and are formatted as
  Binance's decimal strings, so sums are exact.
* **Every interval is the aggregation of the 1m klines** (open of the first, max
  high, min low, close of the last, sums of volumes and trades) with Binance's UTC
  alignment from :mod:`dm_resources.intervals`; tests can compare derived candles
  against :meth:`FakeExchange.klines` directly.
* **Binance's semantics where our client depends on them**: ``startTime``/``endTime``
  inclusive on ``open_time``, default limit 500, max 1500 (else 400 code -1130),
  invalid symbol 400 code -1121, request weight by limit accumulated per minute in
  ``X-MBX-USED-WEIGHT-1M`` (and a 429 past ``weight_limit``), the candle containing
  "now" returned while still open, nothing from the future.
* **Faults on demand**: ``fail_next`` queues error responses (429 with Retry-After,
  418, 5xx), ``drop_next`` closes connections without answering, ``holes`` removes
  1m rows the exchange itself never had (an outage), ``bad_prints`` scales one 1m row's
  prices (a bad print in the exchange's own REST data).
* Every request is logged as ``(path, params)`` so tests assert what was asked.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from dm_resources.intervals import (
    MINUTE_MS,
    VALID_INTERVALS,
    bucket_start,
    close_time,
    next_bucket_start,
)
from ingest_service.bookpath import BookPath
from ingest_service.pricepath import (  # noqa: F401  (re-exported: tests import them from here)
    _COLUMNS,
    GENESIS_MS,
    HORIZON_MS,
    PRICE_DECIMALS,
    QTY_DECIMALS,
    Market,
)

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
# The market itself lives in ingest_service.pricepath, shared with the session generator (make demo).
QUOTE_DECIMALS = PRICE_DECIMALS + QTY_DECIMALS


def _fmt(value: int, decimals: int) -> str:
    """An integer count of 10**-decimals units as a fixed-point decimal string."""
    sign = "-" if value < 0 else ""
    q, r = divmod(abs(int(value)), 10**decimals)
    return f"{sign}{q}.{r:0{decimals}d}"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def weight_for_limit(limit: int) -> int:
    """Binance's klines request weight by limit (kept separate from the client's copy on purpose)."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


class VirtualClock:
    """A millisecond clock that only moves when slept on: share it between client and fake.

    Passing ``clock.sleep`` and ``clock.now_ms`` to the client lets the weight window
    turn over without a test waiting a real minute; ``sleeps`` records every request.
    """

    def __init__(self, start_ms: int) -> None:
        self._t = start_ms
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now_ms(self) -> int:
        with self._lock:
            return self._t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._t += max(0, round(seconds * 1000))

    def advance(self, ms: int) -> None:
        with self._lock:
            self._t += ms


def _row(open_time: int, interval: str, agg: dict[str, int]) -> list[Any]:
    return [
        open_time,
        _fmt(agg["open"], PRICE_DECIMALS),
        _fmt(agg["high"], PRICE_DECIMALS),
        _fmt(agg["low"], PRICE_DECIMALS),
        _fmt(agg["close"], PRICE_DECIMALS),
        _fmt(agg["volume"], QTY_DECIMALS),
        close_time(open_time, interval),
        _fmt(agg["quote_volume"], QUOTE_DECIMALS),
        int(agg["trades"]),
        _fmt(agg["taker_buy_volume"], QTY_DECIMALS),
        _fmt(agg["taker_buy_quote_volume"], QUOTE_DECIMALS),
        "0",
    ]


@dataclass
class _Fault:
    status: int | None  # None: drop the connection without answering (unless delay_s)
    retry_after: float | None
    body: dict[str, Any] | None
    delay_s: float = 0.0  # answer normally, but only after this long (a client timeout)


_ERROR_MSGS = {
    418: (-1003, "Way too many requests; IP banned until further notice."),
    429: (-1003, "Too many requests; current limit of IP is 2400 requests per minute."),
    500: (-1000, "An unknown error occurred while processing the request."),
    502: (-1000, "Bad gateway."),
    503: (-1001, "Service Unavailable."),
    504: (-1007, "Timeout waiting for response from backend server."),
}


class FakeExchange:
    """A Binance futures REST server on ``127.0.0.1`` and a free port; see the module docstring."""

    def __init__(
        self,
        *,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        now_ms: int | Callable[[], int] | None = None,
        holes: Iterable[tuple[str, int]] = (),
        weight_limit: int = 2400,
        seed: int = 20260101,
        statuses: dict[str, str] | None = None,
        bad_prints: dict[tuple[str, int], float] | None = None,
    ) -> None:
        self.symbols = list(symbols)
        self.statuses = dict(statuses or {})
        self.holes: set[tuple[str, int]] = set(holes)
        # (symbol, open_time) → factor: the exchange's own 1m REST row for that minute has its
        # open/high/low/close multiplied by it (a bad print); delete the key to "correct" it.
        self.bad_prints: dict[tuple[str, int], float] = dict(bad_prints or {})
        self.weight_limit = weight_limit
        self.market = Market(seed)
        self._clock: Callable[[], int] = _wall_ms
        self.now_ms = now_ms  # type: ignore[assignment]  # the setter takes int | callable | None
        self.log: list[tuple[str, dict[str, str]]] = []
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._weight_minute = -1
        self._weight_used = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # /fapi/v1/depth serves the body a test set (set_depth), else the market's own book at the
        # exchange's now: the book the generated session's depth diffs lead to (ingest_service.bookpath).
        self.depth_books: dict[str, dict[str, Any]] = {}
        self.book = BookPath(self.market)
        # Funding schedule per symbol: [(from_ms, interval_ms), ...]; default 8h since genesis.
        self.funding_schedule: dict[str, list[tuple[int, int]]] = {}
        self.funding_limit = 500  # requests per 5 minutes, shared with /fapi/v1/fundingInfo
        self._funding_window = -1
        self._funding_used = 0

    # ----------------------------------------------------------------- configuration

    @property
    def now_ms(self) -> int:
        """The exchange's clock: candles with close_time >= now are still open; later ones do not exist."""
        return int(self._clock())

    @now_ms.setter
    def now_ms(self, value: int | Callable[[], int] | None) -> None:
        if value is None:
            self._clock = _wall_ms
        elif callable(value):
            self._clock = value
        else:
            fixed = int(value)
            self._clock = lambda: fixed

    def fail_next(
        self, status: int, count: int = 1, retry_after: float | None = None, body: dict[str, Any] | None = None
    ) -> None:
        """Answer the next ``count`` API requests with ``status`` (and ``Retry-After`` if given)."""
        with self._lock:
            self._faults.extend(_Fault(status, retry_after, body) for _ in range(count))

    def drop_next(self, count: int = 1) -> None:
        """Close the connection of the next ``count`` API requests without a response."""
        with self._lock:
            self._faults.extend(_Fault(None, None, None) for _ in range(count))

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Answer the next ``count`` API requests normally but only after ``seconds`` (client timeouts)."""
        with self._lock:
            self._faults.extend(_Fault(None, None, None, delay_s=seconds) for _ in range(count))

    def requests_to(self, path: str) -> list[dict[str, str]]:
        with self._lock:
            return [params for p, params in self.log if p == path]

    @property
    def used_weight(self) -> int:
        with self._lock:
            return self._weight_used if self.now_ms // MINUTE_MS == self._weight_minute else 0

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeExchange is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeExchange:
        handler = _make_handler(self)
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-binance", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- market data

    def _aggregate(self, symbol: str, interval: str, opens: list[int], now: int) -> list[list[Any]]:
        """Binance rows for the bucket opens given (ascending); buckets with no minute are absent."""
        if not opens:
            return []
        end = next_bucket_start(opens[-1], interval)
        times, cols = self.market.minutes(symbol, opens[0], min(end, now + 1))
        if times.size == 0:
            return []
        keep = times <= now
        hole_times = [t for (s, t) in self.holes if s == symbol]
        if hole_times:
            keep &= ~np.isin(times, np.asarray(hole_times, dtype=np.int64))
        times = times[keep]
        cols = {c: v[keep] for c, v in cols.items()}
        bad = {t: f for (s, t), f in self.bad_prints.items() if s == symbol}
        if bad and interval == "1m":
            cols = {c: v.copy() for c, v in cols.items()}
            for t, factor in bad.items():
                hit = times == t
                for c in ("open", "high", "low", "close"):
                    cols[c][hit] = np.round(cols[c][hit] * factor).astype(np.int64)
        if times.size == 0:
            return []
        bucket_idx = np.searchsorted(np.asarray(opens, dtype=np.int64), times, side="right") - 1
        starts = np.flatnonzero(np.r_[True, bucket_idx[1:] != bucket_idx[:-1]])
        stops = np.r_[starts[1:], times.size] - 1
        agg = {
            "open": cols["open"][starts],
            "close": cols["close"][stops],
            "high": np.maximum.reduceat(cols["high"], starts),
            "low": np.minimum.reduceat(cols["low"], starts),
        }
        for c in ("volume", "quote_volume", "trades", "taker_buy_volume", "taker_buy_quote_volume"):
            agg[c] = np.add.reduceat(cols[c], starts)
        rows = []
        for j, i in enumerate(starts):
            rows.append(_row(opens[int(bucket_idx[i])], interval, {c: int(v[j]) for c, v in agg.items()}))
        return rows

    def _iter_rows(
        self,
        symbol: str,
        interval: str,
        first_open: int,
        last_open: int,
        now: int,
        reverse: bool = False,
        chunk_size: int = 1500,
    ) -> Iterator[list[Any]]:
        """Rows with ``first_open <= open_time <= last_open`` (and <= now), ascending unless ``reverse``.

        Generated ``chunk_size`` buckets (at most 200k minutes) at a time, so a request
        costs what its ``limit`` asks for, not the whole history.
        """
        last_open = min(last_open, now, HORIZON_MS - 1)
        first_open = max(first_open, bucket_start(GENESIS_MS, interval))
        if reverse:
            t = bucket_start(last_open, interval)
            while t >= first_open:
                chunk: list[int] = []
                span = 0
                while t >= first_open and span < 200_000 * MINUTE_MS and len(chunk) < chunk_size:
                    chunk.append(t)
                    span += next_bucket_start(t, interval) - t
                    t = bucket_start(t - 1, interval)
                yield from reversed(self._aggregate(symbol, interval, chunk[::-1], now))
            return
        t = bucket_start(first_open, interval)
        if t < first_open:
            t = next_bucket_start(t, interval)
        while t <= last_open:
            chunk = []
            span = 0
            while t <= last_open and span < 200_000 * MINUTE_MS and len(chunk) < chunk_size:
                chunk.append(t)
                nt = next_bucket_start(t, interval)
                span += nt - t
                t = nt
            yield from self._aggregate(symbol, interval, chunk, now)

    def klines(
        self,
        symbol: str,
        interval: str,
        start_ms: int,
        end_ms: int,
        *,
        include_open: bool = False,
        now_ms: int | None = None,
    ) -> list[list[Any]]:
        """Binance rows with ``start_ms <= open_time < end_ms`` as the exchange holds them (holes absent).

        For test expectations: no HTTP, no weight. The still-open candle is left out
        unless ``include_open``.
        """
        now = self.now_ms if now_ms is None else now_ms
        rows = list(self._iter_rows(symbol, interval, start_ms, end_ms - 1, now, chunk_size=100_000))
        if not include_open:
            rows = [r for r in rows if r[6] < now]
        return rows

    # ----------------------------------------------------------------- HTTP semantics

    def _charge(self, weight: int) -> tuple[int, bool]:
        """Add ``weight`` to this minute's window; returns (used, over_limit)."""
        minute = self.now_ms // MINUTE_MS
        with self._lock:
            if minute != self._weight_minute:
                self._weight_minute, self._weight_used = minute, 0
            self._weight_used += weight
            return self._weight_used, self._weight_used > self.weight_limit

    def handle(self, path: str, params: dict[str, str]) -> tuple[int | None, dict[str, str], Any]:
        """(status or None to drop the connection, headers, JSON body) for one request."""
        with self._lock:
            self.log.append((path, dict(params)))
        routes: dict[str, Callable[[dict[str, str]], tuple[int, Any]]] = {
            "/fapi/v1/klines": self._klines,
            "/fapi/v1/time": lambda _p: (200, {"serverTime": self.now_ms}),
            "/fapi/v1/exchangeInfo": lambda _p: (200, self._exchange_info()),
            "/fapi/v1/depth": self._depth,
            "/fapi/v1/fundingRate": self._funding_rate,
        }
        if path not in routes:
            return 404, {}, {"code": -1000, "msg": f"Unknown path {path}"}
        weight = self._klines_weight(params) if path == "/fapi/v1/klines" else 1
        weight = self._extra_weight(path, params, weight)
        used, over = self._charge(weight)
        over = over or self._funding_over(path)
        headers = {"X-MBX-USED-WEIGHT-1M": str(used)}
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.delay_s > 0:
            time.sleep(fault.delay_s)
            fault = None
        if fault is not None:
            if fault.status is None:
                return None, {}, None
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            code, msg = _ERROR_MSGS.get(fault.status, (-1000, "Injected failure."))
            return fault.status, headers, fault.body if fault.body is not None else {"code": code, "msg": msg}
        if over:
            now = self.now_ms
            headers["Retry-After"] = str(max(1, -(-((now // MINUTE_MS + 1) * MINUTE_MS - now) // 1000)))
            return 429, headers, {"code": -1003, "msg": _ERROR_MSGS[429][1]}
        status, body = routes[path](params)
        return status, headers, body

    @staticmethod
    def _klines_weight(params: dict[str, str]) -> int:
        try:
            return weight_for_limit(int(params.get("limit", "500")))
        except ValueError:
            return 1

    def _exchange_info(self) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms,
            "symbols": [
                {
                    "symbol": s,
                    "pair": s,
                    "contractType": "PERPETUAL",
                    "status": self.statuses.get(s, "TRADING"),
                    "pricePrecision": PRICE_DECIMALS,
                    "quantityPrecision": QTY_DECIMALS,
                }
                for s in [*self.symbols, *(s for s in self.statuses if s not in self.symbols)]
            ],
        }

    def _klines(self, params: dict[str, str]) -> tuple[int, Any]:
        symbol = params.get("symbol")
        if not symbol:
            return 400, {
                "code": -1102,
                "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            }
        if symbol not in self.symbols and symbol not in self.statuses:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        interval = params.get("interval")
        if interval not in VALID_INTERVALS:
            return 400, {"code": -1120, "msg": "Invalid interval."}
        try:
            limit = int(params.get("limit", "500"))
            start = int(params["startTime"]) if "startTime" in params else None
            end = int(params["endTime"]) if "endTime" in params else None
        except ValueError:
            return 400, {"code": -1100, "msg": "Illegal characters found in a parameter."}
        if not 1 <= limit <= 1500:
            return 400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
        if start is not None and end is not None and start > end:
            return 400, {"code": -1023, "msg": "Start time is greater than end time."}
        now = self.now_ms
        rows: list[list[Any]] = []
        if start is not None:
            last = end if end is not None else now
            for row in self._iter_rows(symbol, interval, start, last, now, chunk_size=limit):
                rows.append(row)
                if len(rows) == limit:
                    break
        else:  # the newest `limit` rows ending at endTime (or now)
            last = end if end is not None else now
            newest_first = self._iter_rows(symbol, interval, GENESIS_MS, last, now, reverse=True, chunk_size=limit)
            for row in newest_first:
                rows.append(row)
                if len(rows) == limit:
                    break
            rows.reverse()
        return 200, rows

    # ----------------------------------------------------------------- depth and funding (issue 14)

    def set_depth(self, symbol: str, body: dict[str, Any]) -> None:
        """The body ``GET /fapi/v1/depth`` answers for ``symbol`` (``lastUpdateId``, ``E``, ``T``, bids, asks)."""
        with self._lock:
            self.depth_books[symbol] = body

    def set_funding_schedule(self, symbol: str, schedule: list[tuple[int, int]]) -> None:
        """Funding interval changes of ``symbol``: ``[(from_ms, interval_ms), ...]`` ascending."""
        self.funding_schedule[symbol] = sorted(schedule)

    def funding_events(self, symbol: str, lo: int, hi: int) -> list[dict[str, Any]]:
        """Settled funding events with ``lo <= fundingTime - jitter <= hi`` (jitter 0–9 ms, like Binance's)."""
        schedule = self.funding_schedule.get(symbol) or [(GENESIS_MS, 8 * 3_600_000)]
        out: list[dict[str, Any]] = []
        for i, (frm, step) in enumerate(schedule):
            until = schedule[i + 1][0] if i + 1 < len(schedule) else HORIZON_MS
            t = max(-(-max(lo, frm) // step) * step, frm)
            while t < until and t <= hi:
                h = zlib.crc32(f"{symbol}:{t}".encode())
                rate = (h % 20001) - 5000  # −0.00005000 .. +0.00015000 in 1e-8 units
                out.append(
                    {
                        "symbol": symbol,
                        "fundingTime": t + h % 10,
                        "fundingRate": _fmt(rate, 8),
                        "markPrice": _fmt(10_000_000 + h % 1_000_000, 2),
                    }
                )
                t += step
        return out

    def _extra_weight(self, path: str, params: dict[str, str], weight: int) -> int:
        if path == "/fapi/v1/fundingRate":
            return 0  # no IP weight: a separate 500 / 5 min request limit instead
        if path == "/fapi/v1/depth":
            try:
                limit = int(params.get("limit", "500"))
            except ValueError:
                return 2
            return 2 if limit <= 50 else {100: 5, 500: 10, 1000: 20}.get(limit, 20)
        return weight

    def _funding_over(self, path: str) -> bool:
        if path != "/fapi/v1/fundingRate":
            return False
        window = self.now_ms // 300_000
        with self._lock:
            if window != self._funding_window:
                self._funding_window, self._funding_used = window, 0
            self._funding_used += 1
            return self._funding_used > self.funding_limit

    def _depth(self, params: dict[str, str]) -> tuple[int, Any]:
        symbol = params.get("symbol")
        if symbol not in self.symbols:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if params.get("limit", "500") not in {"5", "10", "20", "50", "100", "500", "1000"}:
            return 400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
        limit = int(params.get("limit", "500"))
        with self._lock:  # the book path caches its last tick: one request at a time
            body = self.depth_books.get(symbol)
            if body is None:
                return 200, self.book.snapshot(symbol, self.now_ms, limit)
        return 200, {**body, "bids": body["bids"][:limit], "asks": body["asks"][:limit]}

    def _funding_rate(self, params: dict[str, str]) -> tuple[int, Any]:
        symbol = params.get("symbol")
        if symbol not in self.symbols:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        try:
            limit = int(params.get("limit", "100"))
            start = int(params["startTime"]) if "startTime" in params else None
            end = int(params["endTime"]) if "endTime" in params else None
        except ValueError:
            return 400, {"code": -1100, "msg": "Illegal characters found in a parameter."}
        if not 1 <= limit <= 1000:
            return 400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
        now = self.now_ms
        hi = min(end if end is not None else now, now)
        if start is None:  # the most recent records (200 without times, like Binance; else `limit`)
            rows = [r for r in self.funding_events(symbol, GENESIS_MS, hi) if r["fundingTime"] <= hi]
            return 200, rows[-(200 if end is None else limit) :]
        rows = [r for r in self.funding_events(symbol, start - 10, hi) if start <= r["fundingTime"] <= hi]
        return 200, rows[:limit]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out and hung up is an expected event here, not a traceback on stderr."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(exchange: FakeExchange) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:
            split = urlsplit(self.path)
            params = dict(parse_qsl(split.query, keep_blank_values=True))
            status, headers, body = exchange.handle(split.path, params)
            if status is None:
                self.close_connection = True
                self.connection.close()  # no response at all: the client sees a connection error
                return
            payload = json.dumps(body, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read exchange.log instead
            return

    return Handler
