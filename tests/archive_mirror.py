"""A local mirror of Binance's public kline archive over real HTTP, from the simulated exchange's prices.

Files are generated on first request from :class:`ingest_service.pricepath.Market` (the price path
of ``tests/fake_exchange.py``), so an archive row equals the exchange's REST row for the same
minute, and the exchange's outages (``holes``) are missing from both. The layout is Binance's
(``dm_resources.binance_archive``): ``data/futures/um/{monthly,daily}/klines/SYM/1m/SYM-1m-PERIOD.zip``
and ``.zip.CHECKSUM`` beside each.

Both file formats are served: by default monthly files have no header row (the older futures
files) and daily files start with Binance's header; ``header`` overrides per file. ``micros``
writes timestamps in microseconds (the spot files since 2025) for the files it selects.

Publication follows Binance: a daily file exists once its day has ended, a monthly file once its
month has (``now_ms`` is the mirror's clock). ``faults`` damages single files by name, to see every
guard fail: ``missing`` (404), ``checksum`` (CHECKSUM of other bytes), ``truncated`` (the zip cut
short), ``corrupt`` (bytes flipped inside the member, CRC mismatch), ``malformed`` (one row with a
field that is not a number), ``other_symbol`` (member named for another symbol), ``other_month``
(rows shifted into the next period), ``bad_unit`` (times in neither ms nor µs), ``replaced``
(a later re-publication whose close prices differ; CHECKSUM consistent). Every request is logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from dm_resources.binance_archive import HEADER, KLINES_PREFIX, ArchiveKey
from dm_resources.intervals import DAY_MS, MINUTE_MS
from ingest_service.pricepath import PRICE_DECIMALS, QTY_DECIMALS, Market

QUOTE_DECIMALS = PRICE_DECIMALS + QTY_DECIMALS
FAULTS = (
    "missing",
    "checksum",
    "truncated",
    "corrupt",
    "malformed",
    "other_symbol",
    "other_month",
    "bad_unit",
    "replaced",
)


def _dec(values: np.ndarray, decimals: int) -> list[str]:
    """Integer counts of 10**-decimals as Binance's fixed-point strings."""
    scale = 10**decimals
    q, r = np.divmod(values.astype(np.int64), scale)
    return [f"{a}.{b:0{decimals}d}" for a, b in zip(q.tolist(), r.tolist(), strict=True)]


def kline_csv(times: np.ndarray, cols: dict[str, np.ndarray], *, header: bool, micros: bool = False) -> bytes:
    """Binance's archive CSV for 1m klines (the REST row's twelve fields)."""
    scale = 1000 if micros else 1
    ot = (times * scale).tolist()
    ct = ((times + MINUTE_MS) * scale - 1).tolist()
    fields = [
        ot,
        _dec(cols["open"], PRICE_DECIMALS),
        _dec(cols["high"], PRICE_DECIMALS),
        _dec(cols["low"], PRICE_DECIMALS),
        _dec(cols["close"], PRICE_DECIMALS),
        _dec(cols["volume"], QTY_DECIMALS),
        ct,
        _dec(cols["quote_volume"], QUOTE_DECIMALS),
        cols["trades"].tolist(),
        _dec(cols["taker_buy_volume"], QTY_DECIMALS),
        _dec(cols["taker_buy_quote_volume"], QUOTE_DECIMALS),
    ]
    lines = [",".join(HEADER)] if header else []
    lines.extend(",".join(map(str, row)) + ",0" for row in zip(*fields, strict=True))
    return ("\n".join(lines) + "\n").encode()


def zip_bytes(member: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(member, payload)
    return buf.getvalue()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ArchiveMirror:
    """The archive for ``symbols`` on ``127.0.0.1`` and a free port (see the module docstring)."""

    def __init__(
        self,
        *,
        symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT", "SOLUSDT"),
        now_ms: int | Callable[[], int] | None = None,
        holes: Iterable[tuple[str, int]] = (),
        seed: int = 20260101,
        header: Callable[[ArchiveKey], bool] | None = None,
        micros: Callable[[ArchiveKey], bool] | None = None,
    ) -> None:
        self.symbols = list(symbols)
        self.market = Market(seed)
        self.holes: set[tuple[str, int]] = set(holes)
        self.header = header or (lambda k: k.period == "daily")
        self.micros = micros or (lambda k: False)
        self.faults: dict[str, str] = {}
        self.log: list[str] = []
        self._clock: Callable[[], int] = (
            _wall_ms if now_ms is None else now_ms if callable(now_ms) else (lambda v=int(now_ms): v)
        )
        self._cache: dict[tuple[ArchiveKey, str | None], bytes] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- files

    def published(self, key: ArchiveKey) -> bool:
        """Binance publishes a file once its period has ended (by the mirror's clock)."""
        return key.bounds_ms()[1] <= self._clock() and key.symbol in self.symbols

    def rows(self, key: ArchiveKey) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        start, end = key.bounds_ms()
        times, cols = self.market.minutes(key.symbol, start, end)
        hole_times = [t for s, t in self.holes if s == key.symbol]
        if hole_times:
            keep = ~np.isin(times, np.asarray(hole_times, dtype=np.int64))
            times, cols = times[keep], {c: v[keep] for c, v in cols.items()}
        return times, cols

    def zip_for(self, key: ArchiveKey) -> bytes:
        """The zip as published (faults applied); cached."""
        fault = self.faults.get(key.name)
        with self._lock:
            cached = self._cache.get((key, fault))
        if cached is not None:
            return cached
        times, cols = self.rows(key)
        header, micros = self.header(key), self.micros(key)
        member = key.member
        if fault == "other_month":
            times = times + (key.bounds_ms()[1] - key.bounds_ms()[0])
        if fault == "replaced":
            cols = {**cols, "close": cols["close"] + np.maximum(1, cols["close"] // 1000)}  # +0.1 %
            cols["high"] = np.maximum(cols["high"], cols["close"])
        payload = kline_csv(times, cols, header=header, micros=micros)
        if fault == "malformed":
            lines = payload.split(b"\n")
            i = len(lines) // 2
            fields = lines[i].split(b",")
            fields[2] = b"12x.5"
            lines[i] = b",".join(fields)
            payload = b"\n".join(lines)
        if fault == "bad_unit":
            payload = payload.replace(str(int(times[0])).encode(), str(int(times[0]) * 100).encode(), 1)
        if fault == "other_symbol":
            other = next(s for s in ("ETHUSDT", "BTCUSDT") if s != key.symbol)
            member = member.replace(key.symbol, other)
        data = zip_bytes(member, payload)
        if fault == "truncated":
            data = data[: len(data) // 2]
        if fault == "corrupt":
            mid = len(data) // 2
            data = data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 16]) + data[mid + 16 :]
        with self._lock:
            self._cache[(key, fault)] = data
        return data

    def checksum_for(self, key: ArchiveKey) -> bytes:
        data = self.zip_for(key)
        if self.faults.get(key.name) == "checksum":
            data = data + b"tampered"
        return f"{hashlib.sha256(data).hexdigest()}  {key.name}\n".encode()

    def answer(self, path: str) -> tuple[int, bytes]:
        """(status, body) for one GET of ``path``."""
        with self._lock:
            self.log.append(path)
        key = self._key(path)
        if key is None or not self.published(key) or self.faults.get(key.name) == "missing":
            return 404, b"<Error><Code>NoSuchKey</Code></Error>"
        if path.endswith(".CHECKSUM"):
            return 200, self.checksum_for(key)
        return 200, self.zip_for(key)

    @staticmethod
    def _key(path: str) -> ArchiveKey | None:
        parts = path.strip("/").split("/")
        prefix = KLINES_PREFIX.split("/")
        if len(parts) != len(prefix) + 5 or parts[: len(prefix)] != prefix:
            return None
        period, kind, symbol, interval, name = parts[len(prefix) :]
        if period not in ("monthly", "daily") or kind != "klines" or interval != "1m":
            return None
        base = name.removesuffix(".CHECKSUM")
        label = base.removeprefix(f"{symbol}-{interval}-").removesuffix(".zip")
        try:
            if period == "daily":
                dt.date.fromisoformat(label)
            else:
                dt.date.fromisoformat(label + "-01")
        except ValueError:
            return None
        key = ArchiveKey(symbol, period, label)  # type: ignore[arg-type]  # checked above
        return key if base == key.name else None

    def files_requested(self) -> list[str]:
        with self._lock:
            return [p for p in self.log if p.endswith(".zip")]

    def prepare(self, keys: Iterable[ArchiveKey]) -> None:
        """Generate files ahead of time (benchmarks: generation is not the measured work)."""
        for key in keys:
            if self.published(key):
                self.zip_for(key)

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("ArchiveMirror is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ArchiveMirror:
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="archive-mirror", daemon=True
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

    def __enter__(self) -> ArchiveMirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def month_keys(symbol: str, first: dt.date, last: dt.date) -> list[ArchiveKey]:
    """The monthly files covering ``[first, last]``."""
    out: list[ArchiveKey] = []
    d = first.replace(day=1)
    while d <= last:
        out.append(ArchiveKey.monthly(symbol, d))
        d = (d + dt.timedelta(days=32)).replace(day=1)
    return out


def day_start_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def day_range(day: dt.date) -> tuple[int, int]:
    start = day_start_ms(day)
    return start, start + DAY_MS


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(mirror: ArchiveMirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            status, body = mirror.answer(self.path.split("?", 1)[0])
            self.send_response(status)
            ctype = "application/zip" if self.path.endswith(".zip") and status == 200 else "text/plain"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
