"""The L2 cache shared by API workers: real Redis, real SecantusDB, two apps standing in for two workers."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from api.app import create_app
from api.deps import ApiSettings, AppState
from api.l2 import L2Cache, decode, encode, entry_key
from api.testing import serve
from dm_resources.embedded import free_port
from dm_resources.mongo import MongoStore
from dm_resources.settings import Settings, load_settings
from tests.conftest import HOUR, RedisServer, hour_candles, put_hour_candles

PARAMS = {"pair": "BTCUSDT", "period": "1h", "limit": 3}
TAG = "candles:BTCUSDT:1h"


def worker(store: MongoStore, settings: Settings, **api: Any) -> FastAPI:
    """One API worker: its own L1 and watcher (polled explicitly here), the shared Redis."""
    knobs: dict[str, Any] = {"cache_poll_s": 3600.0, "l2_retry_s": 0.2, **api}
    return create_app(settings, mongo=store, api_settings=ApiSettings(**knobs))


def dm(app: FastAPI) -> AppState:
    st: AppState = app.state.dm
    return st


@contextmanager
def clients(*apps: FastAPI) -> Iterator[list[httpx.Client]]:
    with ExitStack() as stack:
        out = []
        for app in apps:
            url = stack.enter_context(serve(app))
            out.append(stack.enter_context(httpx.Client(base_url=url, timeout=30)))
        yield out


def counter(text: str, name: str, **labels: str) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}\{{{sel}\}} ([0-9.e+]+)$" if labels else rf"^{name} ([0-9.e+]+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def store_reads(client: httpx.Client) -> float:
    return counter(client.get("/metrics").text, "dm_api_cache_store_reads_total", dataset="candles")


def test_entries_encode_the_newest_time_and_key_by_version() -> None:
    assert decode(encode(b"{}", 123)) == (b"{}", 123) and decode(encode(b"x", None)) == (b"x", None)
    a, b = entry_key("p:", TAG, 1, ("candles", 3)), entry_key("p:", TAG, 2, ("candles", 3))
    assert a != b and a.startswith(f"p:{TAG}@1:") and b.startswith(f"p:{TAG}@2:")


def test_a_second_worker_reads_the_first_workers_entry_not_the_store(
    mongo_store: MongoStore, settings_for: Any, redis_url: str, start_ms: int
) -> None:
    settings = settings_for(redis_url)
    a, b = worker(mongo_store, settings), worker(mongo_store, settings)
    with clients(a, b) as (ca, cb):
        first = ca.get("/data/candles", params=PARAMS).json()
        assert [r["open_time"] for r in first["rows"]] == [start_ms + i * HOUR for i in (7, 8, 9)]
        assert cb.get("/data/candles", params=PARAMS).json() == first
        assert (store_reads(ca), store_reads(cb)) == (1, 0)
        text = cb.get("/metrics").text
        assert counter(text, "dm_api_cache_lookups_total", level="l2", result="hit") == 1
        assert counter(text, "dm_api_cache_lookups_total", level="l1", result="miss") >= 1
        assert counter(text, "dm_api_cache_lookup_seconds_count", level="l2") == 1
        assert counter(text, "dm_api_cache_l2_up") == 1
        ready = cb.get("/health/readiness").json()
        assert (
            ready["status"] == "healthy"
            and ready["state"] in ("ready", "degraded")
            and "cache" not in ready["degraded"]
        )
        assert next(c for c in ready["checks"] if c["name"] == "cache")["ok"] is True

        # A write bumps the version: both workers drop L1 when their watcher sees it, and the old
        # L2 entry is never read again (its key names the old version).
        put_hour_candles(mongo_store, hour_candles(start_ms + 10 * HOUR, 1))
        for app in (a, b):
            assert dm(app)._watcher is not None and dm(app)._watcher.poll_once() == [TAG]
        want = [start_ms + i * HOUR for i in (8, 9, 10)]
        assert [r["open_time"] for r in cb.get("/data/candles", params=PARAMS).json()["rows"]] == want
        assert [r["open_time"] for r in ca.get("/data/candles", params=PARAMS).json()["rows"]] == want
        assert (store_reads(ca), store_reads(cb)) == (1, 1)  # one store read per version, across workers


def test_a_bump_seen_by_one_worker_never_serves_the_old_entry_from_l2(
    mongo_store: MongoStore, settings_for: Any, redis_url: str, start_ms: int
) -> None:
    """Stale data from L2 is impossible by construction: the stale entry still exists, under the old key."""
    settings = settings_for(redis_url)
    a = worker(mongo_store, settings)
    with clients(a) as (ca,):
        old = ca.get("/data/candles", params=PARAMS).json()
        st = dm(a)
        version = st.version(TAG)
        assert version is not None
        assert st.l2 is not None and st.l2.get(TAG, version, ("candles",)) is None  # keys are per route key
        put_hour_candles(mongo_store, hour_candles(start_ms + 10 * HOUR, 1))
        assert st._watcher is not None and st._watcher.poll_once() == [TAG]
        assert st.version(TAG) == version + 1
        keys = st.l2.client.keys(f"{st.l2.prefix}{TAG}@{version}:*")
        assert len(keys) == 1  # the old entry is still there, unreachable
        new = ca.get("/data/candles", params=PARAMS).json()
        assert new != old and new["rows"][-1]["open_time"] == start_ms + 10 * HOUR


def test_redis_down_or_slow_never_fails_a_read_and_l2_comes_back(
    mongo_store: MongoStore, settings_for: Any, own_redis: RedisServer, start_ms: int
) -> None:
    settings = settings_for(own_redis.url)
    a = worker(mongo_store, settings)
    st = dm(a)
    with clients(a) as (ca,):
        good = ca.get("/data/candles", params=PARAMS).json()
        own_redis.stop()
        st.hot.invalidate()  # force the L2 path
        resp = ca.get("/data/candles", params=PARAMS)
        assert resp.status_code == 200 and resp.json() == good
        ready = ca.get("/health/readiness")
        body = ready.json()
        assert (
            ready.status_code == 200
            and body["status"] == "healthy"
            and body["state"] == "degraded"
            and "cache" in body["degraded"]
            and "cache" not in body["down"]
        )
        text = ca.get("/metrics").text
        assert counter(text, "dm_api_cache_lookups_total", level="l2", result="error") >= 1
        assert counter(text, "dm_api_cache_l2_up") == 0
        # while the circuit is open, reads skip Redis without a network round trip
        for _ in range(3):
            st.hot.invalidate()
            assert ca.get("/data/candles", params=PARAMS).json() == good

        own_redis.start()  # same port: the cache comes back without a restart
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st.hot.invalidate()
            ca.get("/data/candles", params=PARAMS)
            if st.l2 is not None and st.l2.up:
                break
            time.sleep(0.1)
        assert st.l2 is not None and st.l2.up
        st.hot.invalidate()
        before = store_reads(ca)
        assert ca.get("/data/candles", params=PARAMS).json() == good
        assert store_reads(ca) - before <= 1
        assert ca.get("/health/readiness").json()["degraded"].count("cache") == 0

        # A Redis that accepts connections but does not answer (stopped process): each command
        # gives up after the timeout and the store answers.
        assert own_redis.proc is not None and own_redis.proc.pid is not None
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(st.l2.retry_s)  # let any open circuit close so the read really tries Redis
            st.hot.invalidate()
            errors = st.l2.errors
            resp = ca.get("/data/candles", params=PARAMS)
            assert resp.status_code == 200 and resp.json() == good
            assert st.l2.errors > errors and "Timeout" in (st.l2.last_error or "")
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)


def test_l2_client_gives_up_within_its_timeout_and_skips_while_open() -> None:
    """No Redis at all on the port: a get is a miss, then the circuit skips the network."""
    port = free_port()
    now = [0.0]
    l2 = L2Cache(f"redis://127.0.0.1:{port}/0", prefix="t:", timeout_s=0.05, retry_s=1.0, clock=lambda: now[0])
    assert l2.get(TAG, 1, "k") is None and not l2.up and l2.errors == 1
    assert l2.get(TAG, 1, "k") is None and l2.errors == 1 and l2.skipped == 1
    assert l2.claim(TAG, 1, "k") is True  # unusable Redis: this process reads the store itself
    now[0] = 1.5
    assert l2.get(TAG, 1, "k") is None and l2.errors == 2  # retried after the pause, still down
    with pytest.raises(redis.ConnectionError):
        l2.ping()
    l2.close()


def test_without_redis_the_cache_is_per_worker_as_before(
    mongo_store: MongoStore, settings_for: Any, start_ms: int
) -> None:
    settings = settings_for(None)
    a, b = worker(mongo_store, settings), worker(mongo_store, settings)
    assert dm(a).l2 is None
    with clients(a, b) as (ca, cb):
        assert ca.get("/data/candles", params=PARAMS).json() == cb.get("/data/candles", params=PARAMS).json()
        assert (store_reads(ca), store_reads(cb)) == (1, 1)
        ready = ca.get("/health/readiness").json()
        assert all(c["name"] != "cache" for c in ready["checks"])
        assert 'dm_api_cache_lookups_total{level="l2"' not in ca.get("/metrics").text


def test_redis_url_must_name_a_redis_scheme() -> None:
    with pytest.raises(Exception, match="redis://"):
        load_settings(redis_url="http://127.0.0.1:6379")
