"""The L2 cache and the live strategy under 4 API workers (``uvicorn --workers 4``), side by side in one run.

* **workers**: the cached-candles load of ``bench/bench_api.py`` (``/data/candles?period=1m`` latest
  N at concurrency 16) spread over ``--keys`` distinct keys (pairs × limits), while a writer changes
  the newest candle of every pair each ``--bump-s`` (a real ``CandleStore`` write: a version bump,
  as the candle assets do). Run once without L2 (the anchor: each worker its own L1) and once with
  ``DM_REDIS_URL``. Reports the store reads per 1,000 requests (summed over the 4 workers'
  ``/metrics``) beside the floor (distinct keys × versions), rps and p99.
* **outage**: the L2 run again, and ``redis-server`` is killed halfway: failed requests (must be 0),
  p99 before and during the outage, and the readiness answer during it.
* **reload**: the strategy file (a ConfigMap-shaped symlink swap) changes; the time until every
  worker applies it (each worker's own ``loaded_at``, read from ``/health/strategy``).

Starts its own SecantusDB and ``redis-server`` (never the machine's Redis, which it does not kill).

    .venv/bin/python bench/bench_cache.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_api import day_frame, pct
from dm_resources.candle_store import CandleStore
from dm_resources.embedded import ROOT, ManagedProcess, _http_ok, free_port, start_secantus, wait_until
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore

MIN = 60_000
PAIRS = ("BTCUSDT", "ETHUSDT")
LIMITS = (100, 500, 1000)


def start_redis(port: int, log_dir: Path) -> ManagedProcess:
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = ManagedProcess("redis", args, log_dir / "redis.log").start()
    import redis

    client = redis.Redis(port=port, socket_timeout=0.5)
    wait_until(lambda: _ping(client), 15, f"redis-server on :{port}", proc)
    client.close()
    return proc


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def start_workers(port: int, env: dict[str, str], log_dir: Path, workers: int) -> ManagedProcess:
    cmd = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = ManagedProcess(
        "api", [*cmd, "--workers", str(workers), "--no-access-log"], log_dir / "api.log", env={**os.environ, **env}
    ).start()
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/health/liveness"), 120, f"API on :{port}", proc)
    return proc


def per_worker(base: str, path: str, workers: int, parse: Any, tries: int = 400) -> dict[str, Any]:
    """One answer per worker process: fresh connections until every pid has answered."""
    seen: dict[str, Any] = {}
    for _ in range(tries):
        with httpx.Client(timeout=10) as c:
            r = c.get(base + path, headers={"Connection": "close"})
        pid, value = parse(r)
        seen.setdefault(pid, value)
        if len(seen) == workers:
            break
    return seen


def _metrics(r: httpx.Response) -> tuple[str, float]:
    pid = re.search(r'dm_api_process_info\{pid="(\d+)"\}', r.text)
    m = re.search(r'^dm_api_cache_store_reads_total\{dataset="candles"\} ([0-9.e+]+)$', r.text, re.M)
    return (pid.group(1) if pid else "?"), float(m.group(1)) if m else 0.0


def store_reads(base: str, workers: int) -> float:
    seen = per_worker(base, "/metrics", workers, _metrics)
    if len(seen) < workers:
        raise RuntimeError(f"only {len(seen)} of {workers} workers answered /metrics")
    return sum(seen.values())


class Writer(threading.Thread):
    """Changes the newest candle of every pair each ``every_s``: one version bump per pair, as the assets do."""

    def __init__(self, store: MongoStore, last: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.cs, self.last, self.every_s = CandleStore(store), last, every_s
        self.stop_flag = threading.Event()
        self.bumps = 0
        self.rng = np.random.default_rng(1)

    def run(self) -> None:
        while not self.stop_flag.wait(self.every_s):
            for p in PAIRS:
                frame = day_frame(self.last, 1, self.rng)
                self.cs.sync_range(p, "1m", self.last, self.last + MIN, frame)
            self.bumps += 1


async def load(
    base: str, concurrency: int, total: int, *, mark: dict[str, float] | None = None
) -> tuple[list[tuple[float, float, int]], float]:
    """(start time, latency s, status) per request; statuses 0 are transport errors."""
    out: list[tuple[float, float, int]] = []
    keys = [{"pair": p, "period": "1m", "limit": n} for p in PAIRS for n in LIMITS]
    rnd = random.Random(7)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        todo = iter(range(total))

        async def worker() -> None:
            for _ in todo:
                params = rnd.choice(keys)
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"{base}/data/candles", params=params)
                    _ = r.content
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                out.append((t0, time.perf_counter() - t0, status))

        started = time.perf_counter()
        if mark is not None:
            mark["started"] = started
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return out, time.perf_counter() - started


def stats(rows: list[tuple[float, float, int]], wall: float | None = None) -> dict[str, Any]:
    lat = [x[1] * 1000 for x in rows]
    out: dict[str, Any] = {
        "requests": len(rows),
        "failed": sum(1 for r in rows if r[2] != 200),
        "statuses": {str(k): v for k, v in sorted(Counter(r[2] for r in rows).items())},
        "p50_ms": round(pct(lat, 50), 2) if lat else None,
        "p99_ms": round(pct(lat, 99), 2) if lat else None,
    }
    if wall:
        out["requests_per_s"] = round(len(rows) / wall, 1)
    return out


def phase(base: str, store: MongoStore, last: int, args: argparse.Namespace) -> dict[str, Any]:
    before = store_reads(base, args.workers)
    writer = Writer(store, last, args.bump_s)
    writer.start()
    rows, wall = asyncio.run(load(base, args.concurrency, args.requests))
    writer.stop_flag.set()
    writer.join()
    reads = store_reads(base, args.workers) - before
    keys = len(PAIRS) * len(LIMITS)
    versions = writer.bumps + 1
    return {
        **stats(rows, wall),
        "distinct_keys": keys,
        "versions_per_key": versions,
        "store_reads": int(reads),
        "store_reads_per_1000": round(reads / len(rows) * 1000, 1),
        "floor_keys_x_versions": keys * versions,
        "reads_over_floor": round(reads / (keys * versions), 2),
    }


def outage(base: str, store: MongoStore, last: int, redis_proc: ManagedProcess, args: argparse.Namespace) -> Any:
    writer = Writer(store, last, args.bump_s)
    writer.start()
    mark: dict[str, float] = {}
    ready: dict[str, Any] = {}

    def kill_midway() -> None:
        while "started" not in mark:
            time.sleep(0.01)
        time.sleep(args.kill_after_s)
        mark["killed"] = time.perf_counter()
        redis_proc.kill()
        time.sleep(1.0)
        r = httpx.get(f"{base}/health/readiness", timeout=10)
        ready.update(status=r.status_code, body=r.json())

    killer = threading.Thread(target=kill_midway, daemon=True)
    killer.start()
    rows, wall = asyncio.run(load(base, args.concurrency, args.requests, mark=mark))
    killer.join()
    writer.stop_flag.set()
    writer.join()
    killed = mark.get("killed", float("inf"))
    return {
        "all": stats(rows, wall),
        "before_kill": stats([r for r in rows if r[0] + r[1] < killed]),
        "during_outage": stats([r for r in rows if r[0] >= killed]),
        "readiness_during_outage": {
            "http_status": ready.get("status"),
            "status": ready.get("body", {}).get("status"),
            "degraded": ready.get("body", {}).get("degraded"),
        },
    }


class ConfigMap:
    def __init__(self, root: Path) -> None:
        self.root, self.n = root, 0
        root.mkdir(parents=True)

    @property
    def path(self) -> Path:
        return self.root / "strategy.yaml"

    def write(self, text: str) -> float:
        """The kubelet's update: new timestamped dir, ``..data`` swapped by rename; returns the swap time."""
        self.n += 1
        new = self.root / f"..data_{self.n}"
        new.mkdir()
        (new / "strategy.yaml").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        os.replace(tmp, self.root / "..data")
        at = time.time()
        if not self.path.is_symlink():
            self.path.symlink_to("..data/strategy.yaml")
        return at


def reload_time(base: str, cm: ConfigMap, args: argparse.Namespace) -> dict[str, Any]:
    out = []
    for i in range(args.reloads):
        version = f"bench-{i + 1}"
        changed = cm.write(f"version: {version}\nlimits: {{page_max: {4000 + i}}}\n")
        deadline = time.monotonic() + 30
        loaded: dict[str, float] = {}
        while len(loaded) < args.workers and time.monotonic() < deadline:

            def parse(r: httpx.Response, version: str = version) -> tuple[str, float | None]:
                b = r.json()
                return str(b["pid"]), (b["loaded_at"] if b["version"] == version else None)

            for pid, at in per_worker(base, "/health/strategy", args.workers, parse, tries=50).items():
                if at is not None:
                    loaded[pid] = at
            time.sleep(0.05)
        out.append(round((max(loaded.values()) - changed) * 1000, 1) if len(loaded) == args.workers else None)
        time.sleep(0.5)
    done = [x for x in out if x is not None]
    return {
        "poll_s": args.strategy_poll_s,
        "every_worker_applied_ms": out,
        "max_ms": max(done) if done else None,
        "anchor_poll_interval_ms": args.strategy_poll_s * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--bump-s", type=float, default=2.0, help="seconds between writes of every pair's newest candle")
    ap.add_argument("--kill-after-s", type=float, default=4.0, help="outage phase: kill redis-server this far in")
    ap.add_argument("--strategy-poll-s", type=float, default=1.0)
    ap.add_argument("--reloads", type=int, default=5)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    procs: list[ManagedProcess] = []
    result: dict[str, Any] = {"workers": args.workers, "concurrency": args.concurrency, "requests": args.requests}
    try:
        mport = free_port()
        procs.append(start_secantus(mport, tmp / "mongo"))
        mongo_url = f"mongodb://127.0.0.1:{mport}/?directConnection=true"
        db = f"bench_cache_{uuid.uuid4().hex[:8]}"
        store = MongoStore(mongo_url, db)
        store.ensure_indexes()
        now = int(time.time() * 1000)
        end = now - now % MIN
        rng = np.random.default_rng(3)
        first = end - 2 * 1440 * MIN
        for p in PAIRS:
            CandleStore(store).sync_range(p, "1m", first, end, day_frame(first, 2880, rng))
        last = end - MIN
        meta_url = f"sqlite:///{tmp / 'metadata.db'}"
        MetadataStore(meta_url).migrate()
        cm = ConfigMap(tmp / "configmap")
        cm.write("version: bench-0\n")
        env = {
            "DM_MONGO_URL": mongo_url,
            "DM_MONGO_DB": db,
            "DM_METADATA_URL": meta_url,
            "DM_SYMBOLS": ",".join(PAIRS),
            "DM_DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{free_port()}/graphql",
            "DM_API_STRATEGY_FILE": str(cm.path),
            "DM_API_STRATEGY_POLL_S": str(args.strategy_poll_s),
            "DM_API_PATTERN_WARMUP": "false",
        }
        rport = free_port()
        redis_proc = start_redis(rport, tmp / "redis")
        procs.append(redis_proc)

        for name, extra in (("without_l2", {}), ("with_l2", {"DM_REDIS_URL": f"redis://127.0.0.1:{rport}/0"})):
            port = free_port()
            api = start_workers(port, {**env, **extra}, tmp / name, args.workers)
            procs.append(api)
            base = f"http://127.0.0.1:{port}"
            result[name] = phase(base, store, last, args)
            if name == "with_l2":
                result["strategy_reload"] = reload_time(base, cm, args)
                result["outage"] = outage(base, store, last, redis_proc, args)
            api.stop()
            procs.remove(api)
        w, l2 = result["without_l2"], result["with_l2"]
        result["ratios_with_over_without"] = {
            "store_reads": round(l2["store_reads"] / max(1, w["store_reads"]), 3),
            "requests_per_s": round(l2["requests_per_s"] / w["requests_per_s"], 2),
            "p99": round(l2["p99_ms"] / w["p99_ms"], 2),
        }
        store.client.drop_database(db)
        store.close()
    finally:
        for p in reversed(procs):
            p.stop()
        if os.environ.get("DM_BENCH_KEEP"):
            print(f"kept {tmp}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False, cwd=ROOT)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
