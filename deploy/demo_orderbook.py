"""``make demo``'s order-book story: a book that syncs, one lost diff, the break seen everywhere, the recovery.

The generated session's depth diffs and the simulated exchange's ``/fapi/v1/depth`` follow one
book path (:mod:`ingest_service.bookpath`), so the book rebuilt from the stored diffs syncs with
the exchange's snapshot. After the session, a live feed keeps publishing the path's diffs through
NATS in real time (what the websocket bridge does in production): a snapshot the asset takes now
is proven by the diffs that follow it. Then the feed loses one diff of one symbol, and the
operator sees what the platform does about it: the order-book check fails, ``audit_logs`` and
the book's health say why, the API refuses instants inside the gap (and serves the last valid
book, with its age, only when asked), and the next snapshot re-syncs the book.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

import orjson

from dm_resources.contracts import now_ms
from dm_resources.settings import Settings
from ingest_service.bookpath import TICK_MS, BookPath
from ingest_service.service import connect_nats

CHECK = "orderbook_continuity"


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]


class LiveDepthFeed:
    """Publishes the book path's depth diffs and book tickers to NATS as their ticks come due."""

    def __init__(self, book: BookPath, symbols: list[str], nats_url: str, subject: str, from_ms: int) -> None:
        self.book, self.symbols, self.nats_url, self.subject = book, symbols, nats_url, subject
        self.next_ms = from_ms
        self.published = 0
        self._drops: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="demo-depth-feed", daemon=True)

    def start(self) -> LiveDepthFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def drop(self, symbol: str, lead_ms: int = 1_500) -> int:
        """Lose the depth update of ``symbol`` due ``lead_ms`` from now; returns that tick's event time."""
        k = (now_ms() + lead_ms) // TICK_MS
        with self._lock:
            self._drops.add((symbol, k))
        return self.book.event_time(symbol, k)

    def published_until(self) -> int:
        with self._lock:
            return self.next_ms

    async def _run(self) -> None:
        nc = await connect_nats(self.nats_url, "dm-demo-depth-feed", attempts=5)
        js = nc.jetstream(timeout=10, publish_async_max_pending=4000)
        try:
            while not self._stop.is_set():
                end = now_ms() - 5  # ticks whose event time has come
                with self._lock:
                    start, skip = self.next_ms, set(self._drops)
                envs = list(self.book.envelopes(self.symbols, start, end, skip=skip))
                futures = [await js.publish_async(self.subject, orjson.dumps(e), wait_stall=30) for e in envs]
                if futures:
                    await asyncio.gather(*futures)
                with self._lock:
                    self.next_ms = max(start, end)
                    self.published += len(envs)
                await asyncio.sleep(TICK_MS / 1000)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # loopback URLs we built
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _rebuild(gql: Any, symbols: list[str], today: str, why: str) -> list[str]:
    """One orderbook_job run per symbol (what the 5-minute schedule does), waited for; returns the run ids."""
    runs = [
        gql.launch_run("orderbook_job", partition_key=f"{today}|{s}", tags={"dm/origin": "api", "dm/demo": why})
        for s in symbols
    ]
    statuses = [gql.wait_for_run(r, timeout=600, poll=1.0) for r in runs]
    _say(f"orderbook_job ({why}) for {', '.join(symbols)}: {statuses}")
    return runs


def _verdict(meta: Any, store: Any, symbol: str, today: str, runs: list[str]) -> dict[str, Any]:
    """The check's row of this run in audit_logs, the day's book health, and the day's spans."""
    rows = [r for r in meta.audit_logs(symbol, check_name=CHECK, limit=50) if r.run_id in runs]
    day = dt.date.fromisoformat(today)
    found = meta.health(symbol=symbol, interval="book", day_from=day, day_to=day)
    health = found[0] if found else None
    doc = store.collection("orderbook_days").find_one({"_id": f"{symbol}:{today}"}, {"summary": 1}) or {}
    row = rows[0] if rows else None
    if row is not None:
        _say(f"  {symbol} check {CHECK}: {'PASSED' if row.passed else 'FAILED ' + row.severity} — {row.message}")
    start = (doc.get("summary") or {}).get("history_start")
    if start is not None and row is not None and row.passed:
        first = _iso(int(start))
        _say(f"  {symbol}'s book starts at its first sync, {first}: the diffs before had no snapshot to start from")
    if health is not None:
        _say(
            f"  {symbol} book health {health.day}: score {health.score} (completeness {health.completeness:.2f}, "
            f"consistency {health.consistency:.0f}); why: {(health.details or {}).get('reason')}"
        )
    return {"row": row, "health": health, "summary": doc.get("summary") or {}}


def _api(api: str, symbol: str, **params: Any) -> tuple[int, dict[str, Any]]:
    query = urlencode({"pair": symbol, **params})
    code, body = _get(f"{api}/data/orderbook?{query}")
    shown = body if code != 200 else _book_line(orjson.loads(body))
    _say(f"  GET /data/orderbook?{query} -> {code}: {shown[:420]}")
    return code, orjson.loads(body) if body.startswith("{") else {}


def _book_line(b: dict[str, Any]) -> str:
    bid, ask = b["bids"][0], b["asks"][0]
    return (
        f"book at {_iso(b['snapshot_time'])} (age {b['age_ms']} ms, stale {b['stale']}): best bid {bid[0]} × {bid[1]}, "
        f"best ask {ask[0]} × {ask[1]}, spread {b['spread_bps']:.3f} bps, {b['depth']} levels, "
        f"lastUpdateId {b['last_update_id']}" + (f"; invalid span {b['invalid']}" if b.get("invalid") else "")
    )


def _newest_row(store: Any, symbol: str) -> int | None:
    now = now_ms()
    rows = store.read_range("orderbook_snapshots", symbol, now - 30 * 60_000, now + 1, projection={"snapshot_time": 1})
    return int(rows[-1]["snapshot_time"]) if rows else None


def _wait_stored(store: Any, symbol: str, after_ms: int, timeout: float = 60.0) -> None:
    """Until the ingest service stored a diff of ``symbol`` later than ``after_ms`` (a bounded range read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hi = now_ms() + 1
        if store.read_range("depth_updates", symbol, after_ms + 1, hi, limit=1, projection={"_id": 1}):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no depth update of {symbol} after {_iso(after_ms)} stored within {timeout:.0f} s")


def _sync(gql: Any, store: Any, meta: Any, symbols: list[str], today: str, api: str | None) -> None:
    """The first snapshots, then a rebuild that syncs: the check passes, health 100, the API serves the book."""
    _rebuild(gql, symbols, today, "first snapshot")  # the symbols' first snapshots: nothing to judge yet
    time.sleep(2)
    runs = _rebuild(gql, symbols, today, "sync")
    for s in symbols:
        _verdict(meta, store, s, today, runs)
    newest = _newest_row(store, symbols[0])
    if api and newest is not None:
        _api(api, symbols[0], at=newest + 2_000)
        _api(api, symbols[0])  # now: after what the last rebuild proved
        _api(api, symbols[0], allow_stale="true")


def _break(gql: Any, store: Any, meta: Any, feed: LiveDepthFeed, victim: str, today: str, api: str | None) -> None:
    """One lost diff: the failing check, the audit row, the health's reason, the API's 404 inside the gap."""
    _say(f"the feed loses one depth update of {victim} ...")
    lost_at = feed.drop(victim)
    _wait_stored(store, victim, lost_at + 3_000)
    runs = _rebuild(gql, [victim], today, "after the lost diff")
    broken = _verdict(meta, store, victim, today, runs)
    span = next((s for s in broken["summary"].get("spans", []) if "continuity break" in s["reason"]), None)
    if api and span is not None:
        inside = (span["start"] + min(span["end"], now_ms())) // 2
        _api(api, victim, at=inside)
        _api(api, victim, at=inside, allow_stale="true")


def _recovery(gql: Any, store: Any, meta: Any, victim: str, today: str, api: str | None) -> None:
    """The next rebuild starts from the snapshot taken after the break: the book is valid again."""
    _say("waiting for the diffs after that run's snapshot, then the next rebuild re-syncs ...")
    time.sleep(20)  # the re-sync, and a 10 s row after it that the next diffs prove
    runs = _rebuild(gql, [victim], today, "recovery")
    healed = _verdict(meta, store, victim, today, runs)
    span = next((s for s in healed["summary"].get("spans", []) if "continuity break" in s["reason"]), None)
    if span is not None:
        _say(
            f"  the break: no book from {_iso(span['start'])} to {_iso(span['end'])} ({span['status']}); "
            "valid again from the re-sync on"
        )
        newest = _newest_row(store, victim)
        if api and newest is not None and newest > span["end"]:
            _api(api, victim, at=newest + 2_000)


def orderbook_demo(
    gql: Any,
    store: Any,
    meta: Any,
    exchange: Any,
    settings: Settings,
    env: dict[str, str],
    session_end_ms: int,
    api_port: int | None,
) -> None:
    """The story: sync (check green, health 100, the API's book), one lost diff, its trail, the recovery."""
    symbols = list(settings.symbols)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    api = f"http://127.0.0.1:{api_port}" if api_port else None
    _say("-" * 70)
    _say(
        "order book: the session's depth diffs and the simulated exchange's /fapi/v1/depth follow one book path; "
        f"a live feed now publishes the diffs after the session ({_iso(session_end_ms)} on) through NATS ..."
    )
    nats_url = env.get("DM_NATS_URL", settings.nats_url)
    feed = LiveDepthFeed(exchange.book, symbols, nats_url, settings.nats_subject, session_end_ms).start()
    try:
        _wait_stored(store, symbols[0], now_ms() - 2_000, timeout=120)
        _say(f"  live feed caught up: {feed.published} messages published")
        _sync(gql, store, meta, symbols, today, api)
        _break(gql, store, meta, feed, symbols[0], today, api)
        _recovery(gql, store, meta, symbols[0], today, api)
    finally:
        feed.stop()
    _say("-" * 70)
