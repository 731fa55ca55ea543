"""Many (day, symbol) partitions in one pass: 1m from every source, 5m…1d in memory, checks, health, audit.

What one candles step does for the partitions of its run (``assets.candles`` is the Dagster glue).
Plain functions over the plain stores and clients, tested without Dagster.

Why it looks like this (the floors are the exchange's weight limit and the bytes to move):

* **One read per source per symbol and chunk**, not per day and interval: the raw klines, the
  stored 1m buckets and the metadata (missing minutes, archive files) of a chunk of days are
  read with one bounded query each; aggregated trades are read per day, and only for days whose
  minutes are not all covered by exchange klines already (a trade day is millions of rows).
* **The archive before REST.** A closed day missing minutes asks the archive
  (``history.ArchiveBatch``: each file once, in parallel); what the archive lacks, and the last
  days, come from REST.
* **REST in parallel under one budget.** Every missing range of the chunk is split into pages of
  :data:`~dm_resources.binance.LEAST_WEIGHT_PAGE` klines (the least weight per row) and fetched by
  a thread pool through the one shared client, whose weight budget counts requests in flight and
  follows ``X-MBX-USED-WEIGHT-1M``. A 418 ban stops the batch: what was built is written, the
  rest is reported, and :attr:`BatchResult.banned` tells the caller to stop the run.
* **No raw documents for history.** Archive and REST minutes go straight into the candle day
  buckets with their source; a stored ``rest``/``archive`` candle *is* the record of that minute
  and is rebuilt from, never refetched (:data:`compute.SETTLED_SOURCES`). Only a repair, where
  REST overrules a websocket kline, still writes the raw kline (so the bad one cannot return).
* **1m then 5m…1d from the 1m frame in memory**, each written once; the checks run on those same
  frames once per partition and interval, and their outcomes become the asset checks, the
  ``audit_logs`` rows and the health rows (the quality assets reuse them, see ``audit``).
* **A failing blocking 1m check stops that partition only**: its derived intervals are not
  written (``PartitionOutcome.blocked_by``), every other partition goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dm_assets.candles import audit, build, compute, health, integrity
from dm_assets.candles.build import DayBuild, check_for, choose_versions, complete_trade_minutes, expected_minutes
from dm_assets.candles.checks import CheckResult
from dm_assets.candles.history import ArchiveBatch, DayArchive
from dm_assets.candles.integrity import FINDING_FLAGS, FLAG_DISAGREE, FLAG_VERIFIED
from dm_assets.partitions import day_bounds_ms
from dm_resources.binance import LEAST_WEIGHT_PAGE, BinanceBanned, Kline
from dm_resources.candle_store import CandleStore
from dm_resources.contracts import CANDLE_INTERVALS, candle_asset_path, now_ms
from dm_resources.intervals import DAY_MS, MINUTE_MS
from dm_resources.metadata.archive import ArchiveFileRecord, archive_files, record_archive_files
from dm_resources.metadata.schemas import AuditLogIn, HealthMetricIn

if TYPE_CHECKING:
    from dm_resources.binance import BinanceClient
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.mongo import MongoStore

log = logging.getLogger(__name__)

# Partitions whose sources are held in memory at once (a month of one symbol, or several symbols' months).
CHUNK_PARTITIONS = 62
REST_WORKERS = 8


@dataclass
class PartitionOutcome:
    """Everything one partition's pass produced, for the asset glue and the tests."""

    day: str
    symbol: str
    builds: dict[str, DayBuild] = field(default_factory=dict)  # per interval written (or attempted)
    checks: dict[str, list[CheckResult]] = field(default_factory=dict)  # per interval
    health: dict[str, HealthMetricIn] = field(default_factory=dict)
    blocked_by: list[str] = field(default_factory=list)  # blocking 1m checks failing with ERROR
    archive: DayArchive | None = None

    @property
    def partition_key(self) -> str:
        return f"{self.day}|{self.symbol}"

    @property
    def blocked(self) -> bool:
        return bool(self.blocked_by)


@dataclass
class BatchResult:
    partitions: list[PartitionOutcome] = field(default_factory=list)
    rest_requests: int = 0
    archive_files: int = 0
    banned: BinanceBanned | None = None
    audit_rows: int = 0

    def by_key(self) -> dict[str, PartitionOutcome]:
        return {p.partition_key: p for p in self.partitions}


@dataclass
class _Day:
    """One partition's inputs, loaded per chunk."""

    symbol: str
    day: str
    start: int
    end: int
    minutes: np.ndarray
    build: DayBuild
    stored: pd.DataFrame
    klines: pd.DataFrame
    confirmed: set[int]
    pending: set[int]
    prior: dict[int, set[str]]
    archive: DayArchive | None = None
    trades: pd.DataFrame | None = None
    from_trades: pd.DataFrame = field(default_factory=pd.DataFrame)
    todo: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    rest_rows: list[Kline] = field(default_factory=list)
    candles: pd.DataFrame | None = None  # the assembled 1m day
    prints: integrity.BadPrints | None = None  # its bad-print screening (reused by the 1m check)


def _slice(frame: pd.DataFrame, start: int, end: int) -> pd.DataFrame:
    if frame.empty:
        return frame
    ot = frame["open_time"].to_numpy(dtype=np.int64)
    lo, hi = np.searchsorted(ot, [start, end])
    return frame.iloc[int(lo) : int(hi)].reset_index(drop=True)


def _archive_frame(rows: pd.DataFrame | None, minutes: np.ndarray) -> pd.DataFrame:
    if rows is None or rows.empty:
        return pd.DataFrame()
    out = rows[rows["open_time"].isin(minutes)].copy()
    out["close_time"] = out["open_time"] + (MINUTE_MS - 1)
    out["source"] = compute.SOURCE_ARCHIVE
    return out.reset_index(drop=True)


def _kline_frame(rows: Sequence[Kline]) -> pd.DataFrame:
    """REST klines as a candle frame, source ``rest`` (floats straight from the exact decimals)."""
    if not rows:
        return pd.DataFrame()
    ot = np.fromiter((k.open_time for k in rows), dtype=np.int64, count=len(rows))
    data: dict[str, Any] = {"open_time": ot, "close_time": ot + (MINUTE_MS - 1)}
    for c in compute.FLOAT_COLUMNS:
        data[c] = np.fromiter((float(getattr(k, c)) for k in rows), dtype=np.float64, count=len(rows))
    data["trades"] = np.fromiter((k.trades for k in rows), dtype=np.int64, count=len(rows))
    data["source"] = compute.SOURCE_REST
    return pd.DataFrame(data)


def _days_of(keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    by_symbol: dict[str, list[str]] = {}
    for day, symbol in keys:
        by_symbol.setdefault(symbol, []).append(day)
    return {s: sorted(set(d)) for s, d in sorted(by_symbol.items())}


def chunks(keys: Sequence[tuple[str, str]], size: int = CHUNK_PARTITIONS) -> list[list[tuple[str, str]]]:
    """(day, symbol) keys in chunks that never split a symbol's month (its archive file is read once)."""
    groups: list[list[tuple[str, str]]] = []
    for symbol, days in _days_of(keys).items():
        month: list[tuple[str, str]] = []
        for d in days:
            if month and month[-1][0][:7] != d[:7]:
                groups.append(month)
                month = []
            month.append((d, symbol))
        if month:
            groups.append(month)
    out: list[list[tuple[str, str]]] = []
    for g in groups:
        if out and len(out[-1]) + len(g) <= size:
            out[-1].extend(g)
        else:
            out.append(list(g))
    return out


@dataclass
class Engine:
    """A run's partitions: see the module docstring. ``intervals`` are the selected candle assets."""

    store: MongoStore
    meta: MetadataStore
    client: BinanceClient | None
    archive: ArchiveBatch | None = None
    intervals: Sequence[str] = CANDLE_INTERVALS
    now: int | None = None
    run_id: str | None = None
    confirm_after: int = build.CONFIRM_AFTER_ATTEMPTS
    thresholds: Callable[[str], integrity.Thresholds] = integrity.thresholds_for
    record_quality: bool = True  # audit rows, health rows (the asset glue); build_1m_day alone does not
    rest_workers: int = REST_WORKERS
    chunk_size: int = CHUNK_PARTITIONS
    on_partition: Callable[[PartitionOutcome], None] | None = None

    def run(self, keys: Sequence[tuple[str, str]]) -> BatchResult:
        """Build every (day, symbol) in ``keys``; returns the outcomes in the order of ``keys``."""
        now = self.now if self.now is not None else now_ms()
        self.now = now
        result = BatchResult()
        for chunk in chunks(keys, self.chunk_size):
            self._chunk(chunk, result)
        order = {k: i for i, k in enumerate(f"{d}|{s}" for d, s in keys)}
        result.partitions.sort(key=lambda p: order.get(p.partition_key, 0))
        return result

    # ------------------------------------------------------------------ one chunk

    def _chunk(self, chunk: list[tuple[str, str]], result: BatchResult) -> None:
        assert self.now is not None
        build_1m = "1m" in self.intervals
        days = self._load(chunk)
        if build_1m:
            self._consult_archive(days)
            self._plan_rest(days)
            self._fetch_rest(days, result)
        outcomes: list[PartitionOutcome] = []
        audit_rows: list[AuditLogIn] = []
        health_rows: list[HealthMetricIn] = []
        writes: dict[tuple[str, str], list[tuple[int, int, pd.DataFrame, DayBuild]]] = {}
        by_day: dict[str, PartitionOutcome] = {}
        for d in days:
            out = by_day[f"{d.day}|{d.symbol}"] = PartitionOutcome(d.day, d.symbol, archive=d.archive)
            if build_1m:
                events = self._assemble(d, banned=result.banned is not None)
                audit_rows.extend(events)
                if d.candles is not None and not d.candles.empty and d.minutes.size:
                    last = int(d.minutes[-1]) + MINUTE_MS
                    writes.setdefault((d.symbol, "1m"), []).append((d.start, last, d.candles, d.build))
                    d.build.rows = len(d.candles)
                out.builds["1m"] = d.build
            else:
                d.candles = d.stored
        for symbol in sorted({d.symbol for d in days}):
            mine = [d for d in days if d.symbol == symbol]
            self._quality_many(mine, [by_day[f"{d.day}|{symbol}"] for d in mine], "1m", [d.candles for d in mine])
        for symbol in sorted({d.symbol for d in days}):
            # A blocking 1m check failed: that day's derived candles would be wrong, so they wait.
            mine = [d for d in days if d.symbol == symbol and not by_day[f"{d.day}|{symbol}"].blocked]
            one_m, flagged = self._one_minute(mine)
            for iv in self.intervals:
                if iv == "1m":
                    continue
                derived = self._derive_many(mine, iv, one_m, flagged)
                for d, (frame, b) in zip(mine, derived, strict=True):
                    writes.setdefault((d.symbol, iv), []).append((d.start, d.end, frame, b))
                    by_day[f"{d.day}|{symbol}"].builds[iv] = b
                outs = [by_day[f"{d.day}|{symbol}"] for d in mine]
                self._quality_many(mine, outs, iv, [frame for frame, _ in derived])
        for d in days:
            out = by_day[f"{d.day}|{d.symbol}"]
            if self.record_quality:
                for iv, results in out.checks.items():
                    audit_rows.extend(
                        audit.to_audit_log(
                            r,
                            symbol=d.symbol,
                            interval=iv,
                            partition_key=out.partition_key,
                            run_id=self.run_id,
                        )
                        for r in results
                    )
                health_rows.extend(out.health.values())
            outcomes.append(out)
            if self.on_partition is not None:
                self.on_partition(out)
        self._flush(writes)
        if self.archive is not None:
            record_archive_files(self.meta, self.archive.records())
            result.archive_files += sum(len(d.archive.files) for d in days if d.archive)
            self.archive.release()
        if audit_rows:
            result.audit_rows += self.meta.record_audit(audit_rows)
        if health_rows:
            self.meta.upsert_health(health_rows)
        result.rest_requests += sum(d.build.rest_requests for d in days)
        result.partitions.extend(outcomes)

    def _load(self, chunk: list[tuple[str, str]]) -> list[_Day]:
        """The chunk's inputs: one bounded read per source and symbol."""
        assert self.now is not None
        out: list[_Day] = []
        cs = CandleStore(self.store)
        for symbol, days in _days_of(chunk).items():
            lo = day_bounds_ms(days[0])[0]
            hi = day_bounds_ms(days[-1])[1]
            stored = cs.read_frame(symbol, "1m", lo, hi)
            kdocs = (
                self.store.read_range("klines", symbol, lo, hi, extra={"interval": "1m"})
                if "1m" in self.intervals
                else []
            )
            klines = compute.klines_frame(kdocs)
            if not klines.empty:
                klines = klines.sort_values("open_time", kind="stable").reset_index(drop=True)
            confirmed: set[int] = set()
            pending: set[int] = set()
            for r in self.meta.missing(symbol, "1m", lo, hi - 1):
                (confirmed if r.confirmed_at is not None else pending).add(int(r.open_time))
            for day in days:
                start, end = day_bounds_ms(day)
                minutes = expected_minutes(day, self.now)
                day_stored = _slice(stored, start, end)
                prior = (
                    {
                        int(t): set(f)
                        for t, f in zip(day_stored["open_time"].tolist(), day_stored["flags"].tolist(), strict=True)
                        if len(f)
                    }
                    if not day_stored.empty
                    else {}
                )
                day_k = _slice(klines, start, end)
                if not day_k.empty:
                    day_k = day_k[day_k["open_time"].isin(minutes)].drop_duplicates("open_time")
                out.append(
                    _Day(
                        symbol=symbol,
                        day=day,
                        start=start,
                        end=end,
                        minutes=minutes,
                        build=DayBuild(symbol=symbol, day=day, expected=int(minutes.size), as_of=self.now),
                        stored=day_stored,
                        klines=day_k,
                        confirmed={t for t in confirmed if start <= t < end},
                        pending={t for t in pending if start <= t < end},
                        prior=prior,
                    )
                )
        return out

    def _covered(self, d: _Day) -> set[int]:
        have = set(d.klines["open_time"].tolist()) if not d.klines.empty else set()
        if not d.stored.empty:
            have.update(d.stored["open_time"].tolist())
        return have

    def _consult_archive(self, days: list[_Day]) -> None:
        """Ask the archive for closed days with holes, and for days whose covering file was refused before."""
        if self.archive is None or not days:
            return
        assert self.now is not None
        today = dt.datetime.fromtimestamp(self.now / 1000, tz=dt.UTC).date()
        before: dict[str, list[ArchiveFileRecord]] = {}
        for symbol in sorted({d.symbol for d in days}):
            mine = [d for d in days if d.symbol == symbol]
            for rec in archive_files(self.meta, symbol, mine[0].start, mine[-1].end):
                for d in mine:
                    if rec.period_start < d.end and rec.period_end > d.start:
                        before.setdefault(f"{d.day}|{symbol}", []).append(rec)
        wanted = []
        for d in days:
            day = dt.date.fromisoformat(d.day)
            if day >= today or not d.minutes.size:
                continue
            holes = np.setdiff1d(d.minutes, np.fromiter(self._covered(d), dtype=np.int64))
            holes = holes[~np.isin(holes, np.fromiter(d.confirmed, dtype=np.int64))] if d.confirmed else holes
            recs = before.get(f"{d.day}|{d.symbol}", [])
            # Holes; a covering file refused when last fetched (a later run retries it); or stored archive
            # candles whose file Binance has since re-published with another checksum.
            retry = any(r.status == "refused" for r in recs)
            replaced = (
                not holes.size
                and not retry
                and not d.stored.empty
                and bool((d.stored["source"] == compute.SOURCE_ARCHIVE).any())
                and any(
                    self.archive.republished(d.symbol, r.period, r.period_start, r.sha256)
                    for r in recs
                    if r.status == "accepted"
                )
            )
            if holes.size or retry or replaced:
                wanted.append((d.symbol, day))
        answers = self.archive.prefetch(wanted, today)
        for d in days:
            d.archive = answers.get((d.symbol, dt.date.fromisoformat(d.day)))

    def _plan_rest(self, days: list[_Day]) -> None:
        """Per day: the minutes no source has (trades read only for days that still have holes)."""
        for d in days:
            if not d.minutes.size:
                continue
            have = self._covered(d)
            if d.archive is not None and d.archive.rows is not None:
                have.update(d.archive.rows["open_time"].tolist())
            holes = [m for m in d.minutes.tolist() if m not in have and m not in d.confirmed]
            if holes or not d.klines.empty:
                # Trades fill holes, and reconcile with websocket klines where both exist.
                last = int(d.minutes[-1]) + MINUTE_MS
                trades = build._read_trades(self.store, d.symbol, d.start, last)
                if not trades.empty:
                    trades = trades.drop_duplicates("agg_id")
                    complete, empty = complete_trade_minutes(trades, d.minutes)
                    parts: list[pd.DataFrame] = []
                    with_trades = np.setdiff1d(complete, empty)
                    if with_trades.size:
                        built = compute.trades_to_1m(trades)
                        parts.append(built[built["open_time"].isin(with_trades)].assign(source=compute.SOURCE_TRADES))
                    if empty.size:
                        parts.append(build._flat_candles(empty, trades).assign(source=compute.SOURCE_TRADES))
                    d.from_trades = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
                    if not d.from_trades.empty:
                        have.update(d.from_trades["open_time"].tolist())
            d.todo = np.array([m for m in holes if m not in have], dtype=np.int64)

    def _fetch_rest(self, days: list[_Day], result: BatchResult) -> None:
        """Every day's holes from REST, pages of the least weight per row, in parallel under one budget."""
        client = self.client
        if client is None:
            return
        tasks: list[tuple[_Day, int, int]] = []
        for d in days:
            for s, e in compute.group_into_ranges(d.todo, MINUTE_MS, max_count=LEAST_WEIGHT_PAGE):
                tasks.append((d, s, e))
        if not tasks:
            return
        if result.banned is not None:
            for d, _, _ in tasks:
                d.build.rest_error = f"{type(result.banned).__name__}: {result.banned}"
            return

        def one(task: tuple[_Day, int, int]) -> tuple[_Day, list[Kline] | None, BaseException | None]:
            d, s, e = task
            if result.banned is not None:
                return d, None, result.banned
            try:
                return d, client.fetch_klines(d.symbol, "1m", s, e), None
            except BinanceBanned as exc:
                result.banned = exc
                return d, None, exc
            except Exception as exc:  # an exchange error must not lose what was built from local data
                return d, None, exc

        workers = max(1, min(self.rest_workers, len(tasks)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rest") as pool:
            answers = list(pool.map(one, tasks))
        for d, rows, err in answers:
            d.build.rest_requests += 1
            if err is not None:
                d.build.rest_error = d.build.rest_error or f"{type(err).__name__}: {err}"
                log.warning("REST fill for %s %s failed: %s", d.symbol, d.day, err)
            elif rows:
                d.rest_rows.extend(rows)

    # ------------------------------------------------------------------ one day's 1m

    def _assemble(self, d: _Day, *, banned: bool) -> list[AuditLogIn]:
        """Sources → one version per minute, screened and reconciled; repairs; flags. Returns audit events."""
        out = d.build
        th = self.thresholds(d.symbol)
        if not d.minutes.size:
            d.candles = d.stored
            return []
        minutes = d.minutes
        rest_new = _kline_frame(d.rest_rows)
        if not rest_new.empty:
            rest_new = rest_new[rest_new["open_time"].isin(d.todo)].drop_duplicates("open_time")
            out.rest_rows = len(rest_new)
        todo = np.setdiff1d(d.todo, rest_new["open_time"].to_numpy(dtype=np.int64)) if not rest_new.empty else d.todo

        # Still missing after the exchange answered: count an attempt (an error is not evidence). A
        # minute an accepted archive file lacks as well has two answers from the exchange: confirmed now.
        newly_confirmed: set[int] = set()
        if todo.size and self.client is not None and out.rest_error is None:
            arch = d.archive.rows if d.archive is not None else None
            both = set(todo.tolist()) if arch is not None else set()
            if both:
                newly_confirmed |= self.meta.mark_missing(
                    d.symbol,
                    "1m",
                    sorted(both),
                    "neither the archive nor REST has this kline",
                    confirm_after_attempts=1,
                )
            rest_only = sorted(set(todo.tolist()) - both)
            if rest_only:
                newly_confirmed |= self.meta.mark_missing(
                    d.symbol, "1m", rest_only, "exchange returned no kline", confirm_after_attempts=self.confirm_after
                )
            d.pending |= set(todo.tolist()) - newly_confirmed
        d.confirmed |= newly_confirmed
        out.confirmed_missing = sorted(d.confirmed & set(minutes.tolist()))
        out.missing = sorted(set(todo.tolist()) - newly_confirmed)

        stored = d.stored
        settled = (stored[stored["source"].isin(compute.SETTLED_SOURCES)] if not stored.empty else pd.DataFrame()).drop(
            columns=["flags"], errors="ignore"
        )
        archive = _archive_frame(d.archive.rows if d.archive else None, minutes)
        if d.archive is not None:
            out.archive_files = list(d.archive.files)
            out.archive_refused = [r.as_dict() for r in d.archive.refused]
            out.archive_missing = list(d.archive.missing)
        # Fresh sources by precedence; a fresh archive row beats the stored copy of an older file.
        candles = choose_versions([d.klines, rest_new, archive, settled, d.from_trades])
        # Stored minutes no source has any more (raw data past retention) stay as they are.
        if not stored.empty:
            have = set(candles["open_time"].tolist()) if not candles.empty else set()
            keep = stored[~stored["open_time"].isin(have) & stored["open_time"].isin(minutes)]
            if not keep.empty:
                candles = pd.concat([candles, keep.drop(columns=["flags"])], ignore_index=True)
        if candles.empty:
            d.candles = stored
            return []
        candles = candles.sort_values("open_time", kind="stable").reset_index(drop=True)
        candles = candles[[c for c in compute.CANDLE_COLUMNS if c in candles]].copy()
        # close_time is a function of open_time (never trusted from a source); every source has trades.
        candles["close_time"] = candles["open_time"].to_numpy(dtype=np.int64) + (MINUTE_MS - 1)
        candles["trades"] = candles["trades"].fillna(0).to_numpy(dtype=np.int64)

        ws = _of_source(d.klines, compute.SOURCE_KLINE)
        rest_known = pd.concat(
            [_of_source(d.klines, compute.SOURCE_REST), rest_new, _of_source(settled, compute.SOURCE_REST)],
            ignore_index=True,
        )
        pairs: list[integrity.Disagreement] = []
        pairs += integrity.reconcile(ws, d.from_trades, (compute.SOURCE_KLINE, compute.SOURCE_TRADES), th)
        if not archive.empty:
            pairs += integrity.reconcile(archive, ws, (compute.SOURCE_ARCHIVE, compute.SOURCE_KLINE), th)
            pairs += integrity.reconcile(archive, rest_known, (compute.SOURCE_ARCHIVE, compute.SOURCE_REST), th)
            stored_archive = _of_source(settled, compute.SOURCE_ARCHIVE)
            pairs += integrity.reconcile(archive, stored_archive, (compute.SOURCE_ARCHIVE, "stored archive"), th)
        found, d.prints = build.screen_with_prints(candles, th)
        for p in pairs:
            found.setdefault(p.open_time, set()).add(FLAG_DISAGREE)
        out.disagreements = [p.as_dict() for p in pairs]

        events: list[AuditLogIn] = []
        idx = {int(t): i for i, t in enumerate(candles["open_time"].tolist())}
        to_verify = sorted(
            t for t, f in d.prior.items() if (f & set(FINDING_FLAGS)) and FLAG_VERIFIED not in f and t in found
        )[: build.MAX_REPAIR_MINUTES]
        verified_now: set[int] = set()
        if to_verify and self.client is not None and out.rest_error is None and not banned:
            try:
                rest_fix, fix_docs = build._fetch_rest(
                    self.client, d.symbol, np.asarray(to_verify, dtype=np.int64), out
                )
            except Exception as exc:
                out.rest_error = f"{type(exc).__name__}: {exc}"
                rest_fix, fix_docs = pd.DataFrame(), []
            if out.rest_error is None:
                by_time = {int(r["open_time"]): r for _, r in rest_fix.iterrows()} if not rest_fix.empty else {}
                docs_by_time = {doc["open_time"]: doc for doc in fix_docs}
                for t in to_verify:
                    before = candles.iloc[idx[t]].copy()
                    row = by_time.get(t)
                    if row is not None:
                        trial = candles.copy()
                        for c in (*compute.FLOAT_COLUMNS, "trades", "source"):
                            trial.iat[idx[t], trial.columns.get_loc(c)] = row[c]
                        trial_found = build.screen(trial, th).get(t, set())
                        if not trial_found:
                            candles = trial
                            d.prints = None  # the frame changed since it was screened
                            self.store.upsert("klines", [docs_by_time[t]])  # the exchange's settled row overrules
                            found.pop(t, None)
                            out.repaired.append(t)
                            events.append(
                                build._event(d.symbol, d.day, t, "repaired", before, row, d.prior[t], self.run_id)
                            )
                            continue
                        candles = trial  # REST is the trusted source even when it is suspect too
                        d.prints = None
                        found[t] = trial_found
                    verified_now.add(t)
                    out.kept.append(t)
                    events.append(build._event(d.symbol, d.day, t, "kept", before, row, d.prior[t], self.run_id))

        flags_col: list[list[str]] = [[] for _ in range(len(candles))]
        for t in sorted(found):  # most days: nothing found, nothing to do per minute
            i = idx.get(t)
            if i is None:
                continue
            f = set(found[t])
            if f and (t in verified_now or FLAG_VERIFIED in d.prior.get(t, set())):
                f.add(FLAG_VERIFIED)
            flags_col[i] = sorted(f)
            if f - {FLAG_VERIFIED} and not (d.prior.get(t, set()) & set(FINDING_FLAGS)):
                out.detected.append(t)
        candles["flags"] = flags_col
        by_time_dis = {p.open_time: p for p in pairs}
        for t in out.detected:
            row = candles.iloc[idx[t]]
            dis = by_time_dis.get(t)
            events.append(
                AuditLogIn(
                    check_name=check_for(found[t]),
                    severity="ERROR",
                    passed=False,
                    message=f"detected {', '.join(sorted(found[t]))} at {_iso(t)} (source {row['source']})"
                    + (f"; {dis.sources[0]} and {dis.sources[1]} disagree" if dis else ""),
                    details={
                        "event": "detected",
                        "open_time": t,
                        "flags": sorted(found[t]),
                        "values": build._values(row),
                        **({"disagreement": dis.as_dict()} if dis else {}),
                    },
                    asset_key="/".join(candle_asset_path("1m")),
                    partition_key=f"{d.day}|{d.symbol}",
                    symbol=d.symbol,
                    interval="1m",
                    run_id=self.run_id,
                )
            )
        if d.archive is not None:
            for r in d.archive.refused:
                events.append(
                    AuditLogIn(
                        check_name="archive_files_accepted",
                        severity="WARN",
                        passed=False,
                        message=f"archive file {r.file} refused: {r.reason}",
                        details={"event": "archive_refused", **r.as_dict()},
                        asset_key="/".join(candle_asset_path("1m")),
                        partition_key=f"{d.day}|{d.symbol}",
                        symbol=d.symbol,
                        interval="1m",
                        run_id=self.run_id,
                    )
                )
        for names in flags_col:
            for name in names:
                out.flagged[name] = out.flagged.get(name, 0) + 1
        out.by_source = dict(Counter(candles["source"].tolist()))
        d.candles = candles
        return events

    def _flush(self, writes: dict[tuple[str, str], list[tuple[int, int, pd.DataFrame, DayBuild]]]) -> None:
        """Every frame of the chunk into its buckets: one bulk write per symbol and interval.

        1m merges into what is stored (minutes no source has any more are already in the frame);
        a derived interval replaces the day whole (a bucket that is no longer complete must go).
        """
        cs = CandleStore(self.store)
        for (symbol, interval), items in writes.items():
            results = cs.sync_ranges(
                symbol, interval, [(lo, hi, frame) for lo, hi, frame, _ in items], replace=interval != "1m"
            )
            for (_, _, _, b), res in zip(items, results, strict=True):
                b.upserted, b.modified = res.upserted, res.modified

    # ------------------------------------------------------------------ derived intervals and quality

    @staticmethod
    def _one_minute(days: list[_Day]) -> tuple[pd.DataFrame, list[tuple[int, list[str]]]]:
        """The days' 1m frames as one, and its flagged minutes (usually none), for every derived interval."""
        frames = [d.candles if d.candles is not None else d.stored for d in days]
        parts = [f for f in frames if f is not None and not f.empty]
        one_m = pd.concat(parts, ignore_index=True) if len(parts) > 1 else (parts[0] if parts else pd.DataFrame())
        flagged: list[tuple[int, list[str]]] = []
        if not one_m.empty and "flags" in one_m:
            ot = one_m["open_time"].to_numpy(dtype=np.int64)
            flagged = [(int(ot[i]), list(f)) for i, f in enumerate(one_m["flags"].tolist()) if len(f)]
        return one_m, flagged

    def _derive_many(
        self, days: list[_Day], interval: str, one_m: pd.DataFrame, flagged: list[tuple[int, list[str]]]
    ) -> list[tuple[pd.DataFrame, DayBuild]]:
        """One higher interval of each day from its 1m frame in memory (see ``build.build_higher_day``).

        One resample over the days together (a bucket never spans two UTC days, so this equals a
        resample per day, at a fraction of the per-call cost), split back per day.
        """
        assert self.now is not None
        if not days:
            return []
        step = compute.interval_ms(interval)
        excused = set().union(*(d.confirmed | d.pending for d in days))
        bars, incomplete = compute.resample(one_m, interval, confirmed_missing=excused, now_ms=self.now)
        bucket_flags: dict[int, set[str]] = {}
        for t, f in flagged:
            bucket_flags.setdefault(t - t % step, set()).update(f)
        for d in days:
            for t in d.pending:
                bucket_flags.setdefault(t - t % step, set()).add(integrity.FLAG_PROVISIONAL)
        bars_ot = bars["open_time"].to_numpy(dtype=np.int64) if not bars.empty else np.empty(0, np.int64)
        out: list[tuple[pd.DataFrame, DayBuild]] = []
        for d in days:
            b = DayBuild(symbol=d.symbol, day=d.day, interval=interval, as_of=self.now)
            b.expected = int(compute.buckets_in_day(interval))
            b.missing = [int(t) for t in incomplete if d.start <= t < d.end]
            lo, hi = np.searchsorted(bars_ot, [d.start, d.end])
            day_bars = bars.iloc[int(lo) : int(hi)].reset_index(drop=True)
            if bucket_flags:
                ordered = {b: sorted(f) for b, f in bucket_flags.items() if d.start <= b < d.end}
                flags = [list(ordered[t]) if t in ordered else [] for t in day_bars["open_time"].tolist()]
            else:
                flags = [[] for _ in range(len(day_bars))]
            b.provisional = sum(1 for f in flags if integrity.FLAG_PROVISIONAL in f)
            for f in flags:
                for name in f:
                    b.flagged[name] = b.flagged.get(name, 0) + 1
            frame = day_bars.assign(source=compute.SOURCE_DERIVED, flags=flags)
            b.rows = len(frame)
            b.by_source = {compute.SOURCE_DERIVED: len(frame)} if len(frame) else {}
            out.append((frame, b))
        return out

    def _quality_many(
        self,
        days: list[_Day],
        outs: list[PartitionOutcome],
        interval: str,
        frames: Sequence[pd.DataFrame | None],
    ) -> None:
        """Checks once per partition and interval, on the frames just built; health from those outcomes."""
        assert self.now is not None
        if interval not in self.intervals or not days:
            return
        empty = compute.empty_candles().assign(flags=[])
        dfs = []
        for f in frames:
            df = f if f is not None and not f.empty else empty
            dfs.append(df if "flags" in df else df.assign(flags=[[] for _ in range(len(df))]))
        archive = [
            ([{"file": r.file, "reason": r.reason} for r in d.archive.refused], d.archive.consulted)
            if interval == "1m" and d.archive is not None
            else ([], 0)
            for d in days
        ]
        results_by_day = audit.check_days(
            dfs,
            days[0].symbol,
            interval,
            [(d.start, d.end) for d in days],
            now=self.now,
            excused=[audit.excused_from(interval, d.confirmed, d.pending) for d in days],
            archive=archive,
            prints=[d.prints if interval == "1m" else None for d in days],
        )
        step = compute.interval_ms(interval)
        for d, out, df, results in zip(days, outs, dfs, results_by_day, strict=True):
            out.checks[interval] = results
            if interval == "1m":
                out.blocked_by = [r.name for r in results if r.blocking and r.severity == "ERROR"]
            h = health.day_health(df, d.start, self.now, step, results)
            out.health[interval] = HealthMetricIn(
                symbol=d.symbol,
                interval=interval,
                day=dt.date.fromisoformat(d.day),
                completeness=round(100 * h.completeness, 4),
                freshness=round(100 * h.freshness, 4),
                consistency=round(100 * h.consistency, 4),
                score=h.score,
                details=h.details,
                run_id=self.run_id,
            )


def _of_source(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    return frame[frame["source"] == source] if not frame.empty and "source" in frame else pd.DataFrame()


def _iso(t: int) -> str:
    return dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M")


__all__ = ["DAY_MS", "BatchResult", "Engine", "PartitionOutcome", "chunks"]
