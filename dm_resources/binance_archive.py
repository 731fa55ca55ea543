"""Binance's public data archive: 1m kline history as checked files, at no REST weight.

Layout (``binance/binance-public-data``), mirrored exactly under ``DM_BINANCE_ARCHIVE_URL``::

    data/futures/um/monthly/klines/{SYMBOL}/1m/{SYMBOL}-1m-{YYYY-MM}.zip
    data/futures/um/daily/klines/{SYMBOL}/1m/{SYMBOL}-1m-{YYYY-MM-DD}.zip

each beside a ``.zip.CHECKSUM`` file holding ``<sha256 hex>  <file name>``. The zip holds one
CSV, ``{SYMBOL}-1m-{period}.csv``, with Binance's kline row (the REST row's twelve fields).

Why it looks like this:

* **Nothing is assumed about a file.** Older futures files have no header row, newer ones
  start with ``open_time,open,…,ignore``: the first line decides. Binance's spot files moved
  from milliseconds to microseconds in 2025; the unit is read off the magnitude (13 digits ms,
  16 digits µs) and a value that fits neither refuses the file. Daily files appear the day
  after, monthly ones after the month; files go missing (404) and are replaced later, so a
  missing file is an answer (:class:`ArchiveMissing`), not an error, and each run asks again.
* **A file is taken whole or not at all.** A checksum mismatch, a truncated or corrupt zip,
  a member named for another symbol or period, a malformed row, rows outside the file's
  period, out of order or repeated, or a unit that fits neither: :class:`ArchiveRefused`
  names the file and the reason, and nothing from it is used. The caller records the
  refusal (an audit row and a failed check) and a later run asks again.
* **Bulk.** One monthly file is 43,200 rows; it is parsed with pandas' C reader straight into
  float64/int64 columns (the layout the candle buckets store), never row by row. Only a file
  that fails to parse is read again line by line, to name the first bad line.
* **Provenance.** Every accepted file comes with its name, URL, sha256, size and the time it
  was fetched, for the catalog and the materialization metadata.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import hashlib
import io
import logging
import re
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from dm_resources.intervals import DAY_MS, MINUTE_MS

log = logging.getLogger(__name__)

DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
KLINES_PREFIX = "data/futures/um"
HEADER = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
FLOAT_FIELDS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume")
# Epoch timestamps of 2001–2286 have 13 digits in ms and 16 in µs: nothing else is a Binance time.
MS_RANGE = (10**12, 10**13)
US_RANGE = (10**15, 10**16)
# A file larger than this is not a month of 1m klines (~3 MB zipped): refuse before reading it all.
MAX_FILE_BYTES = 64 * 1024 * 1024
_CHECKSUM_RE = re.compile(r"^([0-9a-fA-F]{64})(?:\s+\*?(\S+))?\s*$")

Period = Literal["monthly", "daily"]


class ArchiveError(Exception):
    """Base of what this module raises."""


class ArchiveMissing(ArchiveError):
    """The archive has no such file (HTTP 404): it may appear later."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url
        super().__init__(f"{name}: not in the archive (404 at {url})")


class ArchiveRefused(ArchiveError):
    """The file is there but cannot be trusted; nothing from it is used."""

    def __init__(self, name: str, reason: str, *, url: str = "", sha256: str | None = None) -> None:
        self.name, self.reason, self.url, self.sha256 = name, reason, url, sha256
        super().__init__(f"{name} refused: {reason}")


class ArchiveUnavailable(ArchiveError):
    """The archive did not answer usefully (5xx, timeouts) after retries: not evidence of anything."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(f"{name}: archive unavailable: {reason}")


class _Transient(Exception):
    pass


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True, order=True)
class ArchiveKey:
    """One archive file: a symbol's 1m klines for a month (``2026-01``) or a day (``2026-01-05``)."""

    symbol: str
    period: Period
    label: str
    interval: str = "1m"

    @property
    def name(self) -> str:
        return f"{self.symbol}-{self.interval}-{self.label}.zip"

    @property
    def member(self) -> str:
        return f"{self.symbol}-{self.interval}-{self.label}.csv"

    @property
    def path(self) -> str:
        return f"{KLINES_PREFIX}/{self.period}/klines/{self.symbol}/{self.interval}/{self.name}"

    def bounds_ms(self) -> tuple[int, int]:
        """``[start, end)`` of the period the file covers (UTC)."""
        if self.period == "daily":
            d = dt.date.fromisoformat(self.label)
            start = _day_ms(d)
            return start, start + DAY_MS
        year, month = (int(x) for x in self.label.split("-"))
        days = calendar.monthrange(year, month)[1]
        start = _day_ms(dt.date(year, month, 1))
        return start, start + days * DAY_MS

    @classmethod
    def monthly(cls, symbol: str, day: dt.date) -> ArchiveKey:
        return cls(symbol, "monthly", f"{day.year:04d}-{day.month:02d}")

    @classmethod
    def daily(cls, symbol: str, day: dt.date) -> ArchiveKey:
        return cls(symbol, "daily", day.isoformat())


def _day_ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)


def month_end(day: dt.date) -> dt.date:
    """The last day of ``day``'s month."""
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def candidate_files(symbol: str, day: dt.date, today: dt.date) -> list[ArchiveKey]:
    """The files that may hold ``day``, best first; none for today or later (the day is not closed).

    A day of a month that has ended is in the monthly file (one download serves the month); the
    daily file is the fallback for a monthly file not published yet or gone, and the only file for
    a closed day of the current month.
    """
    if day >= today:
        return []
    if month_end(day) < today:
        return [ArchiveKey.monthly(symbol, day), ArchiveKey.daily(symbol, day)]
    return [ArchiveKey.daily(symbol, day)]


# --------------------------------------------------------------------------- parsing


@dataclass
class ArchiveFile:
    """An accepted file: its provenance and its rows as columns (times in ms)."""

    key: ArchiveKey
    url: str
    sha256: str
    size: int
    fetched_at: int  # epoch ms
    header: bool
    unit: Literal["ms", "us"]
    frame: pd.DataFrame  # open_time int64 ms, the eight float fields, trades int64; ascending

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def rows(self) -> int:
        return len(self.frame)

    def provenance(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "url": self.url,
            "sha256": self.sha256,
            "size": self.size,
            "rows": self.rows,
            "header": self.header,
            "unit": self.unit,
            "fetched_at": dt.datetime.fromtimestamp(self.fetched_at / 1000, tz=dt.UTC).isoformat(),
        }

    def day(self, start_ms: int, end_ms: int) -> pd.DataFrame:
        """The rows with ``start_ms <= open_time < end_ms``."""
        ot = self.frame["open_time"].to_numpy()
        lo, hi = np.searchsorted(ot, [start_ms, end_ms])
        return self.frame.iloc[int(lo) : int(hi)]


def parse_checksum(text: str, key: ArchiveKey) -> str:
    """The sha256 hex of a ``.CHECKSUM`` file (``<hex>  <name>``)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    m = _CHECKSUM_RE.match(line)
    if m is None:
        raise ArchiveRefused(key.name, f"CHECKSUM file is not '<sha256>  <name>': {line[:80]!r}")
    if m.group(2) is not None and m.group(2) != key.name:
        raise ArchiveRefused(key.name, f"CHECKSUM file names {m.group(2)!r}, not {key.name!r}")
    return m.group(1).lower()


def _unit(values: np.ndarray, what: str, key: ArchiveKey) -> Literal["ms", "us"]:
    """The unit of a column of epoch times by magnitude; refuses a value that fits neither or a mix."""
    is_ms = (values >= MS_RANGE[0]) & (values < MS_RANGE[1])
    is_us = (values >= US_RANGE[0]) & (values < US_RANGE[1])
    neither = ~(is_ms | is_us)
    if neither.any():
        bad = int(values[np.flatnonzero(neither)[0]])
        raise ArchiveRefused(key.name, f"{what} {bad} fits neither milliseconds (13 digits) nor microseconds (16)")
    if is_ms.all():
        return "ms"
    if is_us.all():
        return "us"
    raise ArchiveRefused(key.name, f"{what} mixes milliseconds and microseconds")


def _first_bad_line(text: str, header: bool, key: ArchiveKey) -> str:
    """Why the fast reader failed, line by line: the first line that is not a kline row."""
    reader = csv.reader(io.StringIO(text))
    for lineno, row in enumerate(reader, start=1):
        if header and lineno == 1:
            continue
        if len(row) != len(HEADER):
            return f"line {lineno}: {len(row)} fields, a kline row has {len(HEADER)}"
        for name, value in zip(HEADER[:-1], row[:-1], strict=True):
            try:
                if name in ("open_time", "close_time", "count"):
                    int(value)
                else:
                    float(value)
            except ValueError:
                return f"line {lineno}: {name} {value[:40]!r} is not a number"
    return "unreadable rows"


def parse_zip(data: bytes, key: ArchiveKey) -> tuple[pd.DataFrame, bool, Literal["ms", "us"]]:
    """The rows of an archive zip as columns: (frame, had a header, unit). Refuses a bad file whole."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            if names != [key.member]:
                raise ArchiveRefused(key.name, f"zip holds {names[:3]}, expected exactly [{key.member!r}]")
            raw = zf.read(key.member)  # checks the member's CRC-32
    except zipfile.BadZipFile as exc:
        raise ArchiveRefused(key.name, f"truncated or corrupt zip: {exc}") from None
    except (EOFError, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ArchiveRefused(key.name, f"truncated or corrupt zip: {type(exc).__name__}: {exc}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ArchiveRefused(key.name, "CSV is not ASCII text") from None
    first = text.split("\n", 1)[0].strip()
    header = first.startswith("open_time")
    if header and tuple(c.strip() for c in first.split(",")) != HEADER:
        raise ArchiveRefused(key.name, f"unknown header {first[:120]!r}")
    body = text[len(first) :] if header else text
    if not body.strip():
        raise ArchiveRefused(key.name, "no rows")
    dtypes: dict[str, Any] = {c: np.float64 for c in FLOAT_FIELDS}
    dtypes |= {"open_time": np.int64, "close_time": np.int64, "count": np.int64, "ignore": object}
    try:
        df = pd.read_csv(
            io.StringIO(text),
            header=0 if header else None,
            names=list(HEADER),
            dtype=dtypes,
            engine="c",
            na_filter=True,
            skip_blank_lines=True,
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise ArchiveRefused(key.name, f"malformed row: {_first_bad_line(text, header, key)}") from exc
    floats = df[list(FLOAT_FIELDS)].to_numpy(dtype=np.float64)
    if not np.isfinite(floats).all():
        i = int(np.flatnonzero(~np.isfinite(floats).all(axis=1))[0])
        raise ArchiveRefused(key.name, f"malformed row: line {i + 1 + int(header)}: a number is missing or not finite")
    ot = df["open_time"].to_numpy(dtype=np.int64)
    ct = df["close_time"].to_numpy(dtype=np.int64)
    unit = _unit(ot, "open_time", key)
    if _unit(ct, "close_time", key) != unit:
        raise ArchiveRefused(key.name, "open_time and close_time are in different units")
    if unit == "us":
        if np.any(ot % 1000):
            raise ArchiveRefused(key.name, "open_time in microseconds is not a whole millisecond")
        ot, ct = ot // 1000, ct // 1000
    line = 1 + int(header)
    misaligned = ot % MINUTE_MS != 0
    if misaligned.any():
        i = int(np.flatnonzero(misaligned)[0])
        raise ArchiveRefused(key.name, f"line {i + line}: open_time {int(ot[i])} is not on a minute")
    wrong_close = ct != ot + MINUTE_MS - 1
    if wrong_close.any():
        i = int(np.flatnonzero(wrong_close)[0])
        raise ArchiveRefused(key.name, f"line {i + line}: close_time {int(ct[i])} is not open_time + 59999")
    start, end = key.bounds_ms()
    outside = (ot < start) | (ot >= end)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        when = dt.datetime.fromtimestamp(int(ot[i]) / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
        raise ArchiveRefused(key.name, f"line {i + line}: a row of {when}, outside the file's period {key.label}")
    if ot.size > 1 and np.any(np.diff(ot) <= 0):
        i = int(np.flatnonzero(np.diff(ot) <= 0)[0]) + 1
        raise ArchiveRefused(key.name, f"line {i + line}: open_time {int(ot[i])} repeats or goes back in time")
    out = pd.DataFrame({"open_time": ot})
    for c in FLOAT_FIELDS:
        out[c] = df[c].to_numpy(dtype=np.float64)
    out["trades"] = df["count"].to_numpy(dtype=np.int64)
    return out, header, unit


# --------------------------------------------------------------------------- client


@dataclass
class ArchiveStats:
    files: int = 0  # accepted
    missing: int = 0  # 404
    refused: int = 0
    bytes: int = 0
    requests: int = 0
    seconds: float = 0.0  # wall time inside fetch()


@dataclass
class ArchiveClient:
    """Downloads and checks archive files. Thread-safe: one instance serves a run's worker threads."""

    base_url: str = DEFAULT_ARCHIVE_URL
    timeout: float = 30.0
    max_retries: int = 3
    session: requests.Session | None = None
    now_ms: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    stats: ArchiveStats = field(default_factory=ArchiveStats)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._own_session = self.session is None
        if self.session is None:
            self.session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._own_session and self.session is not None:
            self.session.close()

    def url(self, key: ArchiveKey) -> str:
        return f"{self.base_url}/{key.path}"

    def _get(self, url: str, name: str) -> bytes:
        assert self.session is not None

        def attempt() -> bytes:
            with self._lock:
                self.stats.requests += 1
            try:
                resp = self.session.get(url, timeout=self.timeout)  # type: ignore[union-attr]  # set in __post_init__
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise _Transient(f"{type(exc).__name__}: {exc}") from exc
            if resp.status_code == 404:
                raise ArchiveMissing(name, url)
            if resp.status_code >= 500 or resp.status_code == 429:
                raise _Transient(f"HTTP {resp.status_code}")
            if resp.status_code != 200:
                raise ArchiveRefused(name, f"HTTP {resp.status_code} from {url}", url=url)
            length = int(resp.headers.get("Content-Length") or 0)
            if length > MAX_FILE_BYTES or len(resp.content) > MAX_FILE_BYTES:
                raise ArchiveRefused(name, f"larger than {MAX_FILE_BYTES} bytes", url=url)
            return resp.content

        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential_jitter(multiplier=0.5, max=10),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Transient as exc:
            raise ArchiveUnavailable(name, str(exc)) from exc

    def checksum(self, key: ArchiveKey) -> str:
        """The published sha256 of a file (raises ArchiveMissing when there is no such file)."""
        data = self._get(self.url(key) + ".CHECKSUM", key.name)
        return parse_checksum(data.decode("ascii", errors="replace"), key)

    def fetch(self, key: ArchiveKey) -> ArchiveFile:
        """Download, verify and parse one file; ArchiveMissing, ArchiveRefused or ArchiveUnavailable if not."""
        t0 = time.perf_counter()
        url = self.url(key)
        try:
            expected = self.checksum(key)
            data = self._get(url, key.name)
            fetched_at = self.now_ms()
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected:
                raise ArchiveRefused(
                    key.name, f"checksum mismatch: file sha256 {digest}, CHECKSUM says {expected}", url=url
                )
            try:
                frame, header, unit = parse_zip(data, key)
            except ArchiveRefused as exc:
                exc.url, exc.sha256 = url, digest
                raise
            with self._lock:
                self.stats.files += 1
                self.stats.bytes += len(data)
            return ArchiveFile(key, url, digest, len(data), fetched_at, header, unit, frame)
        except ArchiveMissing:
            with self._lock:
                self.stats.missing += 1
            raise
        except ArchiveRefused as exc:
            exc.url = exc.url or url
            with self._lock:
                self.stats.refused += 1
            log.warning("archive file refused: %s", exc)
            raise
        finally:
            with self._lock:
                self.stats.seconds += time.perf_counter() - t0
