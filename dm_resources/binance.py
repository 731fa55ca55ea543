"""Binance USD-M futures REST client for kline gap fills and backfills.

Why it looks like this:

* **Exact numbers.** Binance sends prices and quantities as decimal strings; they
  become :class:`decimal.Decimal` here and ``Decimal128`` in MongoDB, never floats.
  A row whose numbers are not strings (e.g. a JSON float) is refused: it may
  already have lost digits.
* **Closed candles only.** The newest row of a kline page may be the candle still
  forming. A row is kept only if ``close_time < now - closed_margin_ms``, with
  ``now`` read *before* the request is sent: the server answered later than that,
  so a candle closed by our clock was closed by the server's too (the margin
  absorbs clock skew and the exchange's settling of the last trades). A candle
  dropped here is fetched on the next run; an open candle stored as closed would
  be wrong forever (``_id``s are deterministic and inserts idempotent).
* **Paging without gaps or overlaps.** Each page asks for at most the rows that can
  exist in the remaining range (fewer rows cost less weight), the next page starts
  at the last ``open_time + 1``, and a short page ends the range. Our ``end_ms`` is
  exclusive like everywhere else in the project; Binance's ``endTime`` is inclusive.
* **Least weight per row.** A page costs 1/2/5/10 weight for limits <100/<500/≤1000/>1000,
  so per row 1/99 = 0.0101, 2/499 = 0.0040, 5/1000 = 0.0050, 10/1500 = 0.0067: pages of
  499 rows (:data:`LEAST_WEIGHT_PAGE`) fetch the most history per weight. A day of 1m klines
  is then 3 requests of weight 2 (6) instead of one of 10; :func:`least_weight` is the floor.
* **Weight budget, shared by threads and by processes.** Binance limits request weight per
  IP per minute (2400) and says how much the IP used in ``X-MBX-USED-WEIGHT-1M``. A request
  reserves its weight before it is sent (so threads sending in parallel count each other's
  requests in flight), and every response re-syncs the count to the larger of our count and
  the header, which includes other processes on the same IP. Before a request that would
  cross ``weight_safety * weight_limit`` the client sleeps to the next minute, so a
  backfill slows down instead of collecting 429s — repeated 429s earn a 418 IP ban.
* **Failures.** 429 waits ``Retry-After`` then retries (bounded); 418 stops at once
  and the client refuses to send anything until the ban's ``Retry-After`` has passed
  (callers loop over symbols and days; each request during a ban extends it). With a
  :class:`BanRegistry` (``MongoBanRegistry``: one small document in MongoDB) the ban is
  shared: every other run's client reads it before sending and stops too;
  5xx, timeouts and dropped connections retry with exponential backoff
  (tenacity); other 4xx are our mistake (bad symbol, bad
  parameter) and raise with Binance's ``{"code", "msg"}``. When retries run out,
  :class:`BinanceUnavailable` says why, and the gap filler records the error
  instead of marking data missing (an error is not evidence of an exchange hole).
* ``sleep`` and ``now_ms`` are injectable so tests and benchmarks run the real
  logic against a virtual clock without waiting.
"""

from __future__ import annotations

import decimal
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import requests
from bson.decimal128 import Decimal128
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential, wait_random

from dm_resources.intervals import MINUTE_MS, max_buckets, validate_interval

log = logging.getLogger(__name__)

KLINES_PATH = "/fapi/v1/klines"
TIME_PATH = "/fapi/v1/time"
EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
MAX_KLINE_LIMIT = 1500
LEAST_WEIGHT_PAGE = 499  # the largest limit of weight 2: the least weight per kline (module doc)
DEFAULT_WEIGHT_LIMIT = 2400
DEPTH_PATH = "/fapi/v1/depth"
FUNDING_RATE_PATH = "/fapi/v1/fundingRate"
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
MAX_FUNDING_LIMIT = 1000
FUNDING_WINDOW_MS = 5 * MINUTE_MS
FUNDING_WINDOW_LIMIT = 500


# --------------------------------------------------------------------------- errors


class BinanceError(Exception):
    """Base of every error this client raises."""


class BinanceRequestError(BinanceError):
    """Binance refused the request itself (4xx other than 429/418): retrying cannot help."""

    def __init__(self, status: int, code: int | None, msg: str, path: str) -> None:
        self.status, self.code, self.msg, self.path = status, code, msg, path
        super().__init__(f"Binance rejected GET {path} (HTTP {status}, code {code}): {msg}")


class BinanceBanned(BinanceError):
    """HTTP 418: the IP is banned for ignoring 429s. Stop all requests until the ban ends."""

    def __init__(self, retry_after_s: float | None, msg: str, path: str) -> None:
        self.retry_after_s, self.msg, self.path = retry_after_s, msg, path
        until = f"Retry-After {retry_after_s:g} s" if retry_after_s is not None else "no Retry-After given"
        super().__init__(
            f"Binance banned this IP (HTTP 418 on GET {path}, {until}): {msg or 'no message'}; "
            "no request is sent until the ban ends"
        )


class BinanceUnavailable(BinanceError):
    """Retries ran out (5xx, timeouts, connection errors or repeated 429s)."""

    def __init__(self, reason: str, path: str, attempts: int) -> None:
        self.reason, self.path, self.attempts = reason, path, attempts
        super().__init__(f"Binance unavailable for GET {path} after {attempts} attempt(s): {reason}")


class BinanceProtocolError(BinanceError):
    """The response does not have the shape Binance documents (malformed row, non-advancing page)."""


class _Transient(Exception):
    """A failure worth retrying; ``retry_after_s`` overrides the backoff (429's Retry-After)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


# --------------------------------------------------------------------------- klines


def request_weight(limit: int) -> int:
    """Request weight of ``GET /fapi/v1/klines`` by ``limit`` (Binance's table)."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def least_weight(rows: int, page: int = LEAST_WEIGHT_PAGE) -> int:
    """The least request weight that fetches ``rows`` klines in pages of at most ``page`` (the REST floor)."""
    full, rest = divmod(max(0, rows), page)
    return full * request_weight(page) + (request_weight(rest) if rest else 0)


def _dec(value: object, field: str) -> Decimal:
    if not isinstance(value, str):
        raise BinanceProtocolError(f"kline {field} must be a decimal string, got {type(value).__name__} {value!r}")
    try:
        d = Decimal(value)
    except decimal.InvalidOperation:
        raise BinanceProtocolError(f"kline {field} {value[:40]!r} is not a decimal number") from None
    if not d.is_finite():
        raise BinanceProtocolError(f"kline {field} {value[:40]!r} is not finite")
    return d


def _int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BinanceProtocolError(f"kline {field} must be an integer, got {type(value).__name__} {value!r}")
    return value


def _d128(value: Decimal) -> Decimal128:
    try:
        return Decimal128(value)
    except decimal.DecimalException as exc:  # more than 34 significant digits
        raise ValueError(f"{value} does not fit Decimal128 exactly") from exc


@dataclass(frozen=True, slots=True)
class Kline:
    """One closed kline as Binance reports it, numbers exact."""

    open_time: int
    close_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades: int
    taker_buy_volume: Decimal
    taker_buy_quote_volume: Decimal

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Kline:
        """Parse one row of ``GET /fapi/v1/klines``.

        Binance's row: ``[openTime, o, h, l, c, v, closeTime, quoteVolume, trades,
        takerBuyBase, takerBuyQuote, ignore]``. Trailing fields (Binance's ``ignore``,
        or anything added later) are ignored.
        """
        if not isinstance(row, list | tuple) or len(row) < 11:
            raise BinanceProtocolError(f"kline row must be a list of at least 11 fields, got {row!r:.200}")
        return cls(
            open_time=_int(row[0], "open_time"),
            open=_dec(row[1], "open"),
            high=_dec(row[2], "high"),
            low=_dec(row[3], "low"),
            close=_dec(row[4], "close"),
            volume=_dec(row[5], "volume"),
            close_time=_int(row[6], "close_time"),
            quote_volume=_dec(row[7], "quote_volume"),
            trades=_int(row[8], "trades"),
            taker_buy_volume=_dec(row[9], "taker_buy_volume"),
            taker_buy_quote_volume=_dec(row[10], "taker_buy_quote_volume"),
        )

    def to_document(self, symbol: str, interval: str, source: str = "rest") -> dict[str, Any]:
        """The ``klines`` document of docs/DATA_MODEL.md (Decimal128 numbers).

        REST rows have no event time, so ``event_time`` is ``None`` rather than an
        invented value; ``source`` tells a REST fill from a websocket kline.
        """
        validate_interval(interval)
        if not symbol or symbol != symbol.upper():
            raise ValueError(f"symbol must be upper case, got {symbol!r}")
        return {
            "_id": f"{symbol}:{interval}:{self.open_time}",
            "symbol": symbol,
            "interval": interval,
            "open_time": self.open_time,
            "close_time": self.close_time,
            "open": _d128(self.open),
            "high": _d128(self.high),
            "low": _d128(self.low),
            "close": _d128(self.close),
            "volume": _d128(self.volume),
            "quote_volume": _d128(self.quote_volume),
            "trades": self.trades,
            "taker_buy_volume": _d128(self.taker_buy_volume),
            "taker_buy_quote_volume": _d128(self.taker_buy_quote_volume),
            "event_time": None,
            "source": source,
        }


# --------------------------------------------------------------------------- client


@dataclass
class ClientStats:
    """Counters for benchmarks and run metadata."""

    requests: int = 0  # HTTP requests sent (including failed ones)
    retries: int = 0  # attempts after a failed one
    sleeps: int = 0  # every sleep: weight budget, Retry-After, backoff
    sleep_seconds: float = 0.0
    weight_waits: int = 0  # sleeps to the next minute because the weight budget was near
    rate_limited: int = 0  # 429 responses
    server_errors: int = 0  # 5xx responses
    network_errors: int = 0  # timeouts and connection errors
    pages: int = 0  # kline pages fetched
    rows: int = 0  # closed klines returned
    open_dropped: int = 0  # still-open candles dropped


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _retry_after(resp: requests.Response) -> float | None:
    raw = resp.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:  # an HTTP-date form; Binance sends seconds, so treat as unknown
        return None


def _error_body(resp: requests.Response) -> tuple[int | None, str]:
    try:
        body = resp.json()
    except ValueError:
        return None, resp.text[:300]
    if isinstance(body, Mapping):
        code = body.get("code")
        return (code if isinstance(code, int) else None), str(body.get("msg", body))[:300]
    return None, str(body)[:300]


class BinanceClient:
    """Synchronous client for the public market-data endpoints of ``fapi``.

    One instance per process is the intent (weight is counted per IP); the accounting
    is guarded by a lock so threads may share it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        weight_limit: int = DEFAULT_WEIGHT_LIMIT,
        weight_safety: float = 0.9,
        max_retries: int = 5,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        now_ms: Callable[[], int] = _wall_ms,
        page_size: int = LEAST_WEIGHT_PAGE,
        closed_margin_ms: int = 1000,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 300.0,
        default_ban_s: float = 120.0,
        weight_window_margin_s: float = 0.5,
        funding_limit: int = FUNDING_WINDOW_LIMIT,
        funding_safety: float = 0.9,
        ban_registry: BanRegistry | None = None,
    ) -> None:
        if not 1 <= page_size <= MAX_KLINE_LIMIT:
            raise ValueError(f"page_size must be within 1..{MAX_KLINE_LIMIT}, got {page_size}")
        if weight_limit < 1 or not 0 < weight_safety <= 1:
            raise ValueError("weight_limit must be >= 1 and weight_safety within (0, 1]")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self._own_session = session is None
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "market-data-manager/0.1")
        self.weight_limit = weight_limit
        self.weight_safety = weight_safety
        self.max_retries = max_retries
        self.timeout = timeout
        self.page_size = page_size
        self.closed_margin_ms = closed_margin_ms
        self.max_retry_after_s = max_retry_after_s
        self.weight_window_margin_s = weight_window_margin_s
        self.default_ban_s = default_ban_s
        self._banned_until_ms: int | None = None
        self.ban_registry = ban_registry
        self._sleep = sleep
        self._now_ms = now_ms
        # initial * 2**n plus up to `initial` of jitter, so replicas that failed together spread out.
        self._backoff = wait_exponential(multiplier=backoff_initial_s, max=backoff_max_s) + wait_random(
            0, backoff_initial_s
        )
        self._lock = threading.Lock()
        self._used_weight = 0
        self._window_minute = -1
        self.stats = ClientStats()
        self.funding_budget = FundingBudget(funding_limit, funding_safety)
        self.funding_stats = FundingStats()

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> BinanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- accounting

    @property
    def used_weight(self) -> int:
        """Weight used in the current minute, as Binance last reported it (or as counted)."""
        with self._lock:
            if self._now_ms() // MINUTE_MS != self._window_minute:
                return 0
            return self._used_weight

    def counters(self) -> dict[str, Any]:
        """Counters plus the current weight, as a JSON-able dict for benchmarks."""
        return {**asdict(self.stats), "used_weight": self.used_weight}

    def _do_sleep(self, seconds: float) -> None:
        with self._lock:
            self.stats.sleeps += 1
            self.stats.sleep_seconds += seconds
        self._sleep(seconds)

    def _reserve_weight(self, weight: int) -> None:
        """Sleep to the next minute if this request would cross the safety budget."""
        budget = self.weight_safety * self.weight_limit
        with self._lock:
            now = self._now_ms()
            minute = now // MINUTE_MS
            if minute != self._window_minute:
                self._window_minute, self._used_weight = minute, 0
            # A request heavier than the whole budget still goes out, on a fresh window.
            must_wait = self._used_weight > 0 and self._used_weight + weight > budget
            wait_s = ((minute + 1) * MINUTE_MS - now) / 1000 + self.weight_window_margin_s
            used = self._used_weight
            if not must_wait:
                self._used_weight += weight  # in flight: parallel senders see it before the header does
                return
        log.info(
            "weight %d + %d would exceed %.0f of %d: sleeping %.2f s to the next minute",
            used,
            weight,
            budget,
            self.weight_limit,
            wait_s,
        )
        with self._lock:
            self.stats.weight_waits += 1
        self._do_sleep(wait_s)
        with self._lock:
            # Trust the sleep even if the injected clock did not move: the window has turned.
            turned = max(self._now_ms() // MINUTE_MS, minute + 1)
            if turned != self._window_minute:
                self._window_minute, self._used_weight = turned, 0
            self._used_weight += weight

    def _record_weight(self, resp: requests.Response, weight: int) -> None:
        header = resp.headers.get(WEIGHT_HEADER)
        with self._lock:
            minute = self._now_ms() // MINUTE_MS
            if minute != self._window_minute:
                self._window_minute, self._used_weight = minute, 0
            # Our count already holds this request (reserved); the header holds the whole IP's use,
            # other processes included, but not our requests still in flight: keep the larger.
            try:
                reported = int(header) if header is not None else 0
            except ValueError:
                reported = 0
            self._used_weight = max(self._used_weight, reported)

    # ----------------------------------------------------------------- transport

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after_s is not None:
            return exc.retry_after_s
        return float(self._backoff(state))

    def _before_retry_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        with self._lock:
            self.stats.retries += 1
        log.warning(
            "Binance attempt %d failed (%s); retrying in %.2f s",
            state.attempt_number,
            exc,
            state.next_action.sleep if state.next_action else 0.0,
        )

    @property
    def banned_until_ms(self) -> int | None:
        """End of a 418 ban this client received (epoch ms), or None when not banned."""
        with self._lock:
            if self._banned_until_ms is not None and self._now_ms() >= self._banned_until_ms:
                self._banned_until_ms = None
            return self._banned_until_ms

    def _shared_ban(self) -> int | None:
        """A ban another client recorded in the shared registry (adopted locally), or None."""
        if self.ban_registry is None:
            return None
        until = self.ban_registry.banned_until()
        if until is None or until <= self._now_ms():
            return None
        with self._lock:
            self._banned_until_ms = max(self._banned_until_ms or 0, until)
        return until

    def _attempt(self, path: str, params: Mapping[str, Any], weight: int) -> Any:
        until = self.banned_until_ms or self._shared_ban()
        if until is not None:
            left = (until - self._now_ms()) / 1000
            raise BinanceBanned(left, f"still banned by an earlier 418 for {left:.0f} s; request not sent", path)
        self._reserve_weight(weight)
        url = self.base_url + path
        with self._lock:
            self.stats.requests += 1
        try:
            resp = self.session.get(url, params=dict(params), timeout=self.timeout)
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            with self._lock:
                self.stats.network_errors += 1
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        self._record_weight(resp, weight)
        status = resp.status_code
        if status == 200:
            try:
                return resp.json()
            except ValueError as exc:  # a truncated body from a proxy: worth another try
                raise _Transient(f"HTTP 200 with a body that is not JSON: {resp.text[:120]!r}") from exc
        code, msg = _error_body(resp)
        if status == 418:
            after = _retry_after(resp)
            ban_s = after if after is not None else self.default_ban_s
            with self._lock:
                self._banned_until_ms = self._now_ms() + int(ban_s * 1000)
                until = self._banned_until_ms
            if self.ban_registry is not None:
                self.ban_registry.record(until, f"HTTP 418 on GET {path}: {msg}")
            raise BinanceBanned(after, msg, path)
        if status == 429:
            with self._lock:
                self.stats.rate_limited += 1
            after = _retry_after(resp)
            if after is None:  # no header: the weight window turns at the next minute
                now = self._now_ms()
                after = ((now // MINUTE_MS + 1) * MINUTE_MS - now) / 1000 + self.weight_window_margin_s
            if after > self.max_retry_after_s:
                raise BinanceUnavailable(
                    f"HTTP 429 with Retry-After {after:g} s, longer than the "
                    f"{self.max_retry_after_s:g} s this client waits: {msg}",
                    path,
                    1,
                )
            raise _Transient(f"HTTP 429 rate limited (code {code}): {msg}", retry_after_s=after)
        if status >= 500:
            with self._lock:
                self.stats.server_errors += 1
            after = _retry_after(resp)
            if after is not None and after > self.max_retry_after_s:
                after = None
            raise _Transient(f"HTTP {status}: {msg}", retry_after_s=after)
        raise BinanceRequestError(status, code, msg, path)

    def _get(self, path: str, params: Mapping[str, Any], weight: int) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(_Transient),
            before_sleep=self._before_retry_sleep,
            sleep=self._do_sleep,
            reraise=False,
        )
        try:
            return retrying(self._attempt, path, params, weight)
        except RetryError as err:
            last = err.last_attempt.exception()
            reason = last.reason if isinstance(last, _Transient) else repr(last)
            raise BinanceUnavailable(reason, path, err.last_attempt.attempt_number) from last

    # ----------------------------------------------------------------- endpoints

    def server_time(self) -> int:
        """Binance's clock in epoch ms (``GET /fapi/v1/time``), e.g. to measure our skew."""
        body = self._get(TIME_PATH, {}, 1)
        if not isinstance(body, Mapping) or not isinstance(body.get("serverTime"), int):
            raise BinanceProtocolError(f"unexpected /fapi/v1/time body: {body!r:.200}")
        return int(body["serverTime"])

    def exchange_symbols(self, contract_type: str | None = None) -> list[str]:
        """Symbols with status ``TRADING`` (optionally only one ``contractType``, e.g. ``PERPETUAL``)."""
        body = self._get(EXCHANGE_INFO_PATH, {}, 1)
        if not isinstance(body, Mapping) or not isinstance(body.get("symbols"), list):
            raise BinanceProtocolError(f"unexpected /fapi/v1/exchangeInfo body: {str(body)[:200]}")
        out = []
        for s in body["symbols"]:
            if not isinstance(s, Mapping) or s.get("status") != "TRADING":
                continue
            if contract_type is not None and s.get("contractType") != contract_type:
                continue
            out.append(str(s["symbol"]))
        return out

    def fetch_klines(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> list[Kline]:
        """Closed klines with ``start_ms <= open_time < end_ms``, ascending, each exactly once.

        Rows the exchange does not have (outages) are simply absent: the caller
        compares open times with the expected grid to find them.
        """
        validate_interval(interval)
        out: list[Kline] = []
        last_incl = end_ms - 1
        cursor = start_ms
        while cursor <= last_incl:
            limit = min(self.page_size, max_buckets(cursor, end_ms, interval))
            if limit <= 0:
                break
            now = self._now_ms()  # before sending: the server answers at a later time
            params = {"symbol": symbol, "interval": interval, "startTime": cursor, "endTime": last_incl, "limit": limit}
            body = self._get(KLINES_PATH, params, request_weight(limit))
            if not isinstance(body, list):
                raise BinanceProtocolError(f"klines body is not a list: {str(body)[:200]}")
            page = [Kline.from_row(row) for row in body]
            with self._lock:
                self.stats.pages += 1
            prev = cursor - 1
            reached_open = False
            for k in page:
                if k.open_time <= prev:
                    raise BinanceProtocolError(
                        f"klines page for {symbol} {interval} not strictly ascending from {cursor}: "
                        f"{k.open_time} after {prev}"
                    )
                prev = k.open_time
                if k.open_time > last_incl:  # Binance does not do this; never return past the range
                    break
                if k.close_time >= now - self.closed_margin_ms:
                    reached_open = True  # every later row is open too
                    with self._lock:
                        self.stats.open_dropped += 1
                    break
                out.append(k)
            if reached_open or len(page) < limit or not page or page[-1].open_time >= last_incl:
                break
            cursor = page[-1].open_time + 1
        with self._lock:
            self.stats.rows += len(out)
        return out

    def fetch_depth(self, symbol: str, limit: int = 1000) -> DepthSnapshot:
        """The order book now (``GET /fapi/v1/depth``), for syncing a local book from diffs."""
        weight = depth_weight(limit)
        body = self._get(DEPTH_PATH, {"symbol": symbol, "limit": limit}, weight)
        if not isinstance(body, Mapping) or not isinstance(body.get("lastUpdateId"), int):
            raise BinanceProtocolError(f"unexpected depth body: {str(body)[:200]}")
        e = body.get("E")
        t = body.get("T")
        now = self._now_ms()
        return DepthSnapshot(
            symbol=symbol,
            last_update_id=int(body["lastUpdateId"]),
            event_time=int(e) if isinstance(e, int) else now,
            transaction_time=int(t) if isinstance(t, int) else (int(e) if isinstance(e, int) else now),
            bids=_levels(body.get("bids"), "bids"),
            asks=_levels(body.get("asks"), "asks"),
            limit=limit,
        )

    def fetch_funding_rates(
        self, symbol: str, start_ms: int, end_ms: int, *, page_size: int = MAX_FUNDING_LIMIT
    ) -> list[FundingRate]:
        """Settled funding events with ``start_ms <= fundingTime < end_ms``, ascending, each once.

        Pages forward from the last ``fundingTime + 1`` until a short page; every request first
        waits for room in the shared 500/5 min budget.
        """
        if not 1 <= page_size <= MAX_FUNDING_LIMIT:
            raise ValueError(f"page_size must be within 1..{MAX_FUNDING_LIMIT}")
        budget = self.funding_budget
        out: list[FundingRate] = []
        cursor = start_ms
        while cursor < end_ms:
            with self._lock:
                wait = budget.wait_ms(self._now_ms())
            if wait > 0:
                self.funding_stats.window_waits += 1
                self._do_sleep(wait / 1000)
            with self._lock:
                budget.sent.append(self._now_ms())
            params = {"symbol": symbol, "startTime": cursor, "endTime": end_ms - 1, "limit": page_size}
            body = self._get(FUNDING_RATE_PATH, params, 0)
            self.funding_stats.requests += 1
            if not isinstance(body, list):
                raise BinanceProtocolError(f"fundingRate body is not a list: {str(body)[:200]}")
            self.funding_stats.pages += 1
            prev = cursor - 1
            for row in body:
                if not isinstance(row, Mapping):
                    raise BinanceProtocolError(f"fundingRate row is not an object: {row!r:.120}")
                ft = _int(row.get("fundingTime"), "fundingTime")
                if ft <= prev:
                    raise BinanceProtocolError(f"fundingRate page for {symbol} not ascending: {ft} after {prev}")
                prev = ft
                if ft >= end_ms:
                    break
                mark = row.get("markPrice")
                out.append(
                    FundingRate(
                        symbol,
                        ft,
                        _dec(row.get("fundingRate"), "fundingRate"),
                        _dec(mark, "markPrice") if isinstance(mark, str) and mark else None,
                    )
                )
            if len(body) < page_size or not body:
                break
            cursor = prev + 1
        self.funding_stats.rows += len(out)
        return out


# --------------------------------------------------------------------------- depth snapshots and funding history
#
# Kept below the kline client as additions: the same transport (weight budget, retries, bans)
# serves them. Their limits, from Binance's USD-M docs:
#
# * ``GET /fapi/v1/depth?symbol&limit``: limit one of 5, 10, 20, 50, 100, 500, 1000 (default
#   500); request weight 2 for 5–50, 5 for 100, 10 for 500, 20 for 1000. It counts against the
#   same 2400/min IP weight as klines.
# * ``GET /fapi/v1/fundingRate?symbol&startTime&endTime&limit``: limit ≤ 1000 (default 100),
#   both times inclusive, ascending, at most ``limit`` rows from ``startTime``. It carries no
#   request weight of its own but *shares a separate 500 requests / 5 min / IP limit* with
#   ``/fapi/v1/fundingInfo``: the client keeps its own sliding 5-minute count and sleeps before
#   crossing ``funding_safety × 500`` instead of collecting 429s.


def depth_weight(limit: int) -> int:
    """Request weight of ``GET /fapi/v1/depth`` by ``limit`` (Binance's table)."""
    if limit not in DEPTH_LIMITS:
        raise ValueError(f"depth limit must be one of {DEPTH_LIMITS}, got {limit}")
    if limit <= 50:
        return 2
    return {100: 5, 500: 10, 1000: 20}[limit]


def _levels(raw: object, field: str) -> tuple[tuple[Decimal, Decimal], ...]:
    if not isinstance(raw, list):
        raise BinanceProtocolError(f"depth {field} must be a list, got {type(raw).__name__}")
    out = []
    for lvl in raw:
        if not isinstance(lvl, list | tuple) or len(lvl) < 2:
            raise BinanceProtocolError(f"depth {field} level must be [price, qty], got {lvl!r:.80}")
        out.append((_dec(lvl[0], f"{field} price"), _dec(lvl[1], f"{field} qty")))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    """A REST order-book snapshot: every level up to ``limit`` per side as of ``last_update_id``."""

    symbol: str
    last_update_id: int
    event_time: int  # E: message output time
    transaction_time: int  # T
    bids: tuple[tuple[Decimal, Decimal], ...]
    asks: tuple[tuple[Decimal, Decimal], ...]
    limit: int

    def to_document(self, fetched_at: int | None = None) -> dict[str, Any]:
        """The ``depth_snapshots`` document (docs/DATA_MODEL.md); ``_id`` = ``SYM:lastUpdateId``."""
        return {
            "_id": f"{self.symbol}:{self.last_update_id}",
            "symbol": self.symbol,
            "snapshot_time": self.event_time,
            "transaction_time": self.transaction_time,
            "last_update_id": self.last_update_id,
            "limit": self.limit,
            "fetched_at": fetched_at,
            "bids": [[_d128(p), _d128(q)] for p, q in self.bids],
            "asks": [[_d128(p), _d128(q)] for p, q in self.asks],
        }


@dataclass(frozen=True, slots=True)
class FundingRate:
    """One settled funding event from ``GET /fapi/v1/fundingRate`` (rate as a fraction: 0.0001 = 0.01 %)."""

    symbol: str
    funding_time: int
    funding_rate: Decimal
    mark_price: Decimal | None

    def to_document(self) -> dict[str, Any]:
        """A ``funding_rates`` document with ``source`` ``rest``.

        Binance's ``fundingTime`` sometimes carries a few ms past the settlement instant; the
        stored ``funding_time`` (and so ``_id``) is rounded to the second so that it meets the
        document the ingest service derives from ``markPriceUpdate.T`` (exact) for the same
        settlement. The exchange's value is kept in ``funding_time_raw``. ``event_time`` is the
        settlement time: every live update about that settlement came before it, so the
        ingest's "newest wins" rule never overwrites the settled rate with a prediction.
        """
        t = (self.funding_time + 500) // 1000 * 1000
        return {
            "_id": f"{self.symbol}:{t}",
            "symbol": self.symbol,
            "funding_time": t,
            "funding_time_raw": self.funding_time,
            "funding_rate": _d128(self.funding_rate),
            "mark_price": _d128(self.mark_price) if self.mark_price is not None else None,
            "event_time": t,
            "source": "rest",
        }


@dataclass
class FundingStats:
    requests: int = 0
    pages: int = 0
    rows: int = 0
    window_waits: int = 0  # sleeps because the 500/5 min funding budget was near


class FundingBudget:
    """Sliding count of ``/fapi/v1/fundingRate`` requests in the last 5 minutes (Binance: 500 per IP)."""

    def __init__(self, limit: int = FUNDING_WINDOW_LIMIT, safety: float = 0.9) -> None:
        if limit < 1 or not 0 < safety <= 1:
            raise ValueError("limit must be >= 1 and safety within (0, 1]")
        self.limit, self.safety = limit, safety
        self.sent: list[int] = []

    def wait_ms(self, now: int) -> int:
        """How long to wait before the next request may go out (0: now)."""
        self.sent = [t for t in self.sent if t > now - FUNDING_WINDOW_MS]
        allowed = max(1, int(self.safety * self.limit))
        if len(self.sent) < allowed:
            return 0
        return self.sent[len(self.sent) - allowed] + FUNDING_WINDOW_MS - now + 1


# --------------------------------------------------------------------------- a ban shared by every run on the IP


class BanRegistry:
    """Where a 418 ban is shared between processes on one IP (every run's client reads it before sending)."""

    def banned_until(self) -> int | None:  # pragma: no cover - interface
        raise NotImplementedError

    def record(self, until_ms: int, reason: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class MongoBanRegistry(BanRegistry):
    """The ban as one document (``exchange_bans``, ``_id`` = the REST host) in the market-data MongoDB.

    Reads are cached for ``cache_ms`` so a run sending many requests asks MongoDB about once a
    second, not per request; a ban only ever moves later (``$max``).
    """

    COLLECTION = "exchange_bans"

    def __init__(self, store: Any, key: str, *, cache_ms: int = 1000, now_ms: Callable[[], int] = _wall_ms) -> None:
        self.coll = store.db[self.COLLECTION]
        self.key = key
        self.cache_ms = cache_ms
        self._now_ms = now_ms
        self._lock = threading.Lock()
        self._cached: tuple[int, int | None] | None = None  # (read at, until)

    def banned_until(self) -> int | None:
        now = self._now_ms()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < self.cache_ms:
                return self._cached[1]
        doc = self.coll.find_one({"_id": self.key}, {"until": 1})
        until = int(doc["until"]) if doc and doc.get("until") is not None else None
        with self._lock:
            self._cached = (now, until)
        return until

    def record(self, until_ms: int, reason: str) -> None:
        self.coll.update_one(
            {"_id": self.key},
            {"$max": {"until": int(until_ms)}, "$set": {"reason": reason[:500], "recorded_at": self._now_ms()}},
            upsert=True,
        )
        with self._lock:
            self._cached = (self._now_ms(), int(until_ms))
