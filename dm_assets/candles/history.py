"""Which archive files a batch of (symbol, day) partitions needs, fetched once each, in parallel.

Plain code over :class:`dm_resources.binance_archive.ArchiveClient`, used by the candle build and
by ``bench/bench_history.py``'s bare anchor alike. Per partition it answers: the archive's rows
for the day (source ``archive``), the files they came from (provenance), the files refused (with
the reason) and the files missing (404). A monthly file serves every day of its month in the
batch with one download; a day whose monthly file is not published (or refused) falls back to
its daily file; a day with neither comes from REST (the caller's business).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dm_resources.binance_archive import (
    ArchiveClient,
    ArchiveFile,
    ArchiveKey,
    ArchiveMissing,
    ArchiveRefused,
    ArchiveUnavailable,
    candidate_files,
)
from dm_resources.metadata.archive import ArchiveFileIn

log = logging.getLogger(__name__)

SOURCE_ARCHIVE = "archive"
# Archive downloads in flight per run: enough to hide latency, few enough not to look like a crawler.
DOWNLOAD_WORKERS = 4


@dataclass(frozen=True)
class Refusal:
    file: str
    reason: str
    url: str = ""
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "reason": self.reason, "url": self.url, "sha256": self.sha256}


@dataclass
class DayArchive:
    """What the archive said about one (symbol, day)."""

    rows: pd.DataFrame | None = None  # the day's rows (open_time, floats, trades); None: no accepted file
    files: list[dict[str, Any]] = field(default_factory=list)  # provenance of the file(s) the rows came from
    refused: list[Refusal] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # 404s
    unavailable: list[str] = field(default_factory=list)  # 5xx/timeouts after retries: not evidence

    @property
    def consulted(self) -> int:
        return len(self.files) + len(self.refused) + len(self.missing) + len(self.unavailable)


@dataclass
class ArchiveBatch:
    """A run's archive fetches: each file at most once, then sliced per day."""

    client: ArchiveClient
    run_id: str | None = None
    workers: int = DOWNLOAD_WORKERS
    outcomes: dict[ArchiveKey, ArchiveFile | Exception] = field(default_factory=dict)
    records_pending: list[ArchiveFileIn] = field(default_factory=list)
    _recorded: set[ArchiveKey] = field(default_factory=set)
    _published: dict[ArchiveKey, str | None] = field(default_factory=dict)

    def _fetch_all(self, keys: Iterable[ArchiveKey]) -> None:
        todo = sorted({k for k in keys if k not in self.outcomes})
        self._recorded.difference_update(todo)  # a file fetched again is recorded again
        if not todo:
            return

        def one(key: ArchiveKey) -> ArchiveFile | Exception:
            try:
                return self.client.fetch(key)
            except (ArchiveMissing, ArchiveRefused, ArchiveUnavailable) as exc:
                return exc

        if len(todo) == 1 or self.workers <= 1:
            results = [one(k) for k in todo]
        else:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(todo)), thread_name_prefix="archive") as pool:
                results = list(pool.map(one, todo))
        self.outcomes.update(zip(todo, results, strict=True))

    def prefetch(self, wanted: Sequence[tuple[str, dt.date]], today: dt.date) -> dict[tuple[str, dt.date], DayArchive]:
        """The archive's answer for every (symbol, day) in ``wanted`` (closed days only are looked up)."""
        firsts = {(s, d): candidate_files(s, d, today) for s, d in wanted}
        self._fetch_all(c[0] for c in firsts.values() if c)
        # Fallbacks (daily files) only where the first choice gave no rows.
        seconds = [c[1] for c in firsts.values() if len(c) > 1 and not isinstance(self.outcomes[c[0]], ArchiveFile)]
        self._fetch_all(seconds)
        out: dict[tuple[str, dt.date], DayArchive] = {}
        for (symbol, day), cands in firsts.items():
            ans = DayArchive()
            for key in cands:
                res = self.outcomes.get(key)
                if res is None:
                    continue
                if isinstance(res, ArchiveFile):
                    start = _day_ms(day)
                    ans.rows = res.day(start, start + 86_400_000).reset_index(drop=True)
                    ans.files.append(res.provenance())
                    break
                if isinstance(res, ArchiveRefused):
                    ans.refused.append(Refusal(res.name, res.reason, res.url, res.sha256))
                elif isinstance(res, ArchiveMissing):
                    ans.missing.append(res.name)
                else:
                    ans.unavailable.append(str(res))
            out[(symbol, day)] = ans
        return out

    def republished(self, symbol: str, period: str, period_start: int, sha256: str | None) -> bool:
        """Whether a file we took before now has another published checksum (Binance replaced it).

        One small ``.CHECKSUM`` request per file and run; a file that is gone or unreadable now is
        not a replacement (the stored candles stay).
        """
        day = dt.datetime.fromtimestamp(period_start / 1000, tz=dt.UTC).date()
        key = ArchiveKey.monthly(symbol, day) if period == "monthly" else ArchiveKey.daily(symbol, day)
        if key not in self._published:
            try:
                self._published[key] = self.client.checksum(key)
            except (ArchiveMissing, ArchiveRefused, ArchiveUnavailable):
                self._published[key] = None
        now = self._published[key]
        return now is not None and sha256 is not None and now != sha256

    def _record(self, key: ArchiveKey, res: ArchiveFile | Exception) -> ArchiveFileIn | None:
        start, end = key.bounds_ms()
        base: dict[str, Any] = {
            "name": key.name,
            "symbol": key.symbol,
            "interval": key.interval,
            "period": key.period,
            "period_start": start,
            "period_end": end,
            "url": self.client.url(key),
            "run_id": self.run_id,
        }
        if isinstance(res, ArchiveFile):
            fetched = dt.datetime.fromtimestamp(res.fetched_at / 1000, tz=dt.UTC)
            return ArchiveFileIn(
                **base, status="accepted", sha256=res.sha256, size=res.size, rows=res.rows, fetched_at=fetched
            )
        if isinstance(res, ArchiveRefused):
            return ArchiveFileIn(**base, status="refused", sha256=res.sha256, reason=res.reason)
        if isinstance(res, ArchiveMissing):
            return ArchiveFileIn(**base, status="missing", reason="404: not in the archive")
        return None  # unavailable: nothing learnt about the file, nothing recorded

    def records(self) -> list[ArchiveFileIn]:
        """``archive_files`` rows for every file fetched since the last call (accepted, refused or missing)."""
        out = [*self.records_pending]
        self.records_pending = []
        for key, res in sorted(self.outcomes.items()):
            if key in self._recorded:
                continue
            self._recorded.add(key)
            rec = self._record(key, res)
            if rec is not None:
                out.append(rec)
        return out

    def release(self) -> None:
        """Drop the parsed rows of the files fetched so far (a run over many months must not hold them all)."""
        self.records_pending = self.records()
        self.outcomes = {k: v for k, v in self.outcomes.items() if not isinstance(v, ArchiveFile)}


def _day_ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)
