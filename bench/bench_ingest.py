"""Ingest service benchmarks on the embedded store; prints one JSON document.

Phases (``--phases``, default all three):

* ``throughput``: the store's bare bulk-write rate for the documents of a generated
  session (``insert_idempotent`` per collection in batches, no NATS, same run, same
  store) beside the end-to-end rate of one ``python -m ingest_service`` process:
  publish as fast as JetStream confirms → every message acked after its write.
* ``latency``: aggTrades offered at ``--latency-rate`` msg/s, each stamped with its
  publish time; a poller reads new documents in index order and records when each
  became queryable. p50/p99 of publish → queryable (poll period adds ≤ ``--poll-ms``).
* ``memory``: resident memory of the ingest process, sampled every 5 s while a mixed
  session is offered at ``--memory-rate`` msg/s for ``--memory-duration`` seconds
  (the contract run is 600 s; the default is short for a quick run).

    .venv/bin/python bench/bench_ingest.py --phases throughput --messages 50000
    .venv/bin/python bench/bench_ingest.py --phases memory --memory-duration 600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dm_resources.embedded import free_port, start_nats, start_secantus  # noqa: E402
from dm_resources.mongo import MongoStore  # noqa: E402
from ingest_service.events import decode  # noqa: E402
from ingest_service.generator import generate_session  # noqa: E402
from ingest_service.replay import publish_lines  # noqa: E402
from ingest_service.writer import MessageInfo, plan_batch  # noqa: E402


def names_for(tag: str) -> tuple[str, str]:
    return f"b{tag}.data", f"B{tag}"


class IngestProcess:
    def __init__(self, nats_url: str, mongo_url: str, db: str, tag: str, batch_size: int, log_dir: Path) -> None:
        self.port = free_port()
        self.subject, self.stream = names_for(tag)
        env = {
            **os.environ,
            "DM_NATS_URL": nats_url,
            "DM_MONGO_URL": mongo_url,
            "DM_MONGO_DB": db,
            "DM_NATS_SUBJECT": self.subject,
            "DM_NATS_STREAM": self.stream,
            "DM_NATS_DURABLE": f"d{tag}",
            "DM_INGEST_METRICS_PORT": str(self.port),
            "DM_INGEST_METRICS_HOST": "127.0.0.1",
            "DM_INGEST_BATCH_SIZE": str(batch_size),
            "DM_INGEST_LOG_LEVEL": "WARNING",
        }
        log = open(log_dir / f"ingest-{tag}.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingest_service"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health/readiness", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("ingest did not become ready")

    def acked(self) -> float:
        for line in requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text.splitlines():
            if line.startswith("ingest_messages_acked_total "):
                return float(line.split()[1])
        return 0.0

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        """User + system CPU of the ingest process so far (for CPU per message: capacity planning)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def session(n: int, symbols: int = 10, seed: int = 1) -> list[bytes]:
    names = [f"B{i:02d}USDT" for i in range(symbols)]
    out: list[bytes] = []
    for env in generate_session(names, n // (symbols * 1000) + 1, seed=seed):
        out.append(orjson.dumps(env))
        if len(out) == n:
            break
    return out


def bare_rate(store: MongoStore, lines: list[bytes], batch: int) -> dict:
    """Documents of ``lines`` written straight to the store, batch by batch, as the service would group them."""
    store.ensure_indexes()
    t0 = time.perf_counter()
    docs = 0
    for i in range(0, len(lines), batch):
        chunk = lines[i : i + batch]
        plan = plan_batch([MessageInfo(r, "s", i + j) for j, r in enumerate(chunk)], [decode(r) for r in chunk], 0)
        for coll, items in plan.pending.items():
            if coll == "funding_rates":
                continue  # an update, not an insert; a handful per batch
            docs += store.insert_idempotent(coll, items).inserted
    s = time.perf_counter() - t0
    return {
        "messages_per_s": round(len(lines) / s, 1),
        "docs_per_s": round(docs / s, 1),
        "seconds": round(s, 2),
        "note": "includes decoding+mapping, as the service does; store-only rate is higher",
    }


def store_only_rate(store: MongoStore, lines: list[bytes], batch: int) -> dict:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for raw in lines:
        for coll, doc in decode(raw).docs:
            if coll != "funding_rates":
                grouped[coll].append(doc)
    total = sum(len(v) for v in grouped.values())
    store.ensure_indexes()
    t0, c0 = time.perf_counter(), time.process_time()
    for coll, docs in grouped.items():
        for i in range(0, len(docs), batch):
            store.insert_idempotent(coll, docs[i : i + batch])
    s, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "docs_per_s": round(total / s, 1),
        "messages_per_s": round(len(lines) / s, 1),
        "seconds": round(s, 2),
        # Client-side CPU of the bare bulk insert (pymongo encoding, no decoding): the anchor
        # for the ingest process's CPU per message below.
        "client_cpu_us_per_message": round(cpu / len(lines) * 1e6, 1),
    }


def phase_throughput(nats_url: str, mongo_url: str, n: int, batch: int, log_dir: Path) -> dict:
    lines = session(n)
    tag = uuid.uuid4().hex[:8]
    with MongoStore(mongo_url, f"bare_{tag}") as store:
        bare = store_only_rate(store, lines, batch)
        store.client.drop_database(f"bare_{tag}")
    ing = IngestProcess(nats_url, mongo_url, f"e2e_{tag}", tag, batch, log_dir)
    try:
        t0 = time.perf_counter()
        pub = threading.Thread(
            target=lambda: asyncio.run(publish_lines(nats_url, ing.subject, ing.stream, lines, progress=False))
        )
        pub.start()
        while ing.acked() < n:
            time.sleep(0.1)
        e2e_s = time.perf_counter() - t0
        pub.join()
    finally:
        ing.stop()
    e2e = n / e2e_s

    # Backlog drain: the same messages already in the stream, one ingest process started afterwards.
    tag2 = uuid.uuid4().hex[:8]
    subject, stream = names_for(tag2)
    asyncio.run(publish_lines(nats_url, subject, stream, lines, progress=False))
    ing = IngestProcess(nats_url, mongo_url, f"drain_{tag2}", tag2, batch, log_dir)
    try:
        t0, c0 = time.perf_counter(), ing.cpu_seconds()
        while ing.acked() < n:
            time.sleep(0.1)
        drain_s, drain_cpu = time.perf_counter() - t0, ing.cpu_seconds() - c0
    finally:
        ing.stop()
    return {
        "messages": n,
        "batch_size": batch,
        "store_bare": bare,
        "end_to_end_messages_per_s": round(e2e, 1),
        "end_to_end_seconds": round(e2e_s, 2),
        "ratio_to_bare_messages_per_s": round(e2e / bare["messages_per_s"], 3),
        "backlog_drain_messages_per_s": round(n / drain_s, 1),
        "backlog_ratio_to_bare": round(n / drain_s / bare["messages_per_s"], 3),
        # CPU the ingest process spent per message while draining (decode, validate, map,
        # write, ack): what the capacity plan in docs/DEPLOY.md sizes replicas with.
        "ingest_cpu_us_per_message": round(drain_cpu / n * 1e6, 1),
        "ingest_cpu_ratio_to_bare_client": round(drain_cpu / n * 1e6 / bare["client_cpu_us_per_message"], 2),
        "ingest_cpu_cores_while_draining": round(drain_cpu / drain_s, 2),
        "note": "end_to_end publishes concurrently from this process (its CPU competes on 2 cores); "
        "backlog_drain is the ingest process alone on a pre-published stream",
    }


def phase_latency(
    nats_url: str, mongo_url: str, rate: float, seconds: float, poll_ms: float, batch: int, log_dir: Path
) -> dict:
    tag = uuid.uuid4().hex[:8]
    db = f"lat_{tag}"
    ing = IngestProcess(nats_url, mongo_url, db, tag, batch, log_dir)
    n = int(rate * seconds)

    def messages() -> Iterator[bytes]:
        for i in range(n):
            now = int(time.time() * 1000)
            yield orjson.dumps(
                {
                    "stream": "latusdt@aggTrade",
                    "data": {
                        "e": "aggTrade",
                        "E": now,
                        "s": "LATUSDT",
                        "a": i,
                        "p": "100.5",
                        "q": "0.001",
                        "f": i,
                        "l": i,
                        "T": now,
                        "m": False,
                    },
                }
            )

    latencies: list[int] = []
    done = threading.Event()

    def poll() -> None:
        with MongoStore(mongo_url, db) as store:
            coll = store.collection("agg_trades")
            last = 0
            while not done.is_set() or len(latencies) < n:
                rows = list(
                    coll.find({"symbol": "LATUSDT", "trade_time": {"$gte": last}}, {"trade_time": 1, "agg_id": 1}).sort(
                        [("symbol", 1), ("trade_time", 1), ("agg_id", 1)]
                    )
                )
                seen = int(time.time() * 1000)
                fresh = [r for r in rows if r["agg_id"] not in seen_ids]
                for r in fresh:
                    seen_ids.add(r["agg_id"])
                    latencies.append(seen - r["trade_time"])
                if rows:
                    last = rows[-1]["trade_time"]
                if done.is_set() and time.monotonic() > deadline:
                    return
                time.sleep(poll_ms / 1000)

    seen_ids: set[int] = set()
    deadline = float("inf")
    poller = threading.Thread(target=poll)
    poller.start()
    try:
        asyncio.run(publish_lines(nats_url, ing.subject, ing.stream, messages(), rate=rate, progress=False, window=200))
        deadline = time.monotonic() + 30
        done.set()
        poller.join()
    finally:
        ing.stop()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "offered_msg_per_s": rate,
        "messages": n,
        "observed": len(latencies),
        "poll_ms": poll_ms,
        "p50_ms": q[49],
        "p99_ms": q[98],
        "max_ms": max(latencies) if latencies else None,
    }


def phase_memory(nats_url: str, mongo_url: str, rate: float, duration: float, batch: int, log_dir: Path) -> dict:
    tag = uuid.uuid4().hex[:8]
    ing = IngestProcess(nats_url, mongo_url, f"mem_{tag}", tag, batch, log_dir)
    n = int(rate * duration)
    symbols = 20
    names = [f"M{i:02d}USDT" for i in range(symbols)]
    gen = (orjson.dumps(e) for e in generate_session(names, n // (symbols * 1000) + 2, seed=9))
    lines = (line for _, line in zip(range(n), gen, strict=False))
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not done.is_set():
            samples.append((round(time.monotonic() - t0, 1), round(ing.rss_mb(), 1)))
            done.wait(5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        asyncio.run(publish_lines(nats_url, ing.subject, ing.stream, lines, rate=rate, progress=False))
        while ing.acked() < n:
            time.sleep(0.5)
    finally:
        done.set()
        sampler.join()
        ing.stop()
    half = [m for t, m in samples if t >= samples[-1][0] / 2]
    slope = None
    if len(half) >= 3:
        ts = [t for t, _ in samples if t >= samples[-1][0] / 2]
        mt, mm = statistics.fmean(ts), statistics.fmean(half)
        slope = sum((t - mt) * (m - mm) for t, m in zip(ts, half, strict=True)) / sum((t - mt) ** 2 for t in ts)
    return {
        "offered_msg_per_s": rate,
        "duration_s": duration,
        "messages": n,
        "rss_mb_first": samples[0][1],
        "rss_mb_last": samples[-1][1],
        "rss_mb_max": max(m for _, m in samples),
        "rss_slope_mb_per_min_second_half": round(slope * 60, 3) if slope is not None else None,
        "samples": samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", default="throughput,latency,memory")
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--latency-rate", type=float, default=2000)
    ap.add_argument("--latency-seconds", type=float, default=20)
    ap.add_argument("--poll-ms", type=float, default=25, help="poll period; much lower loads the embedded store itself")
    ap.add_argument("--memory-rate", type=float, default=2000)
    ap.add_argument("--memory-duration", type=float, default=60, help="seconds (the contract run: 600)")
    ap.add_argument("--nats-url", default=None)
    ap.add_argument("--mongo-url", default=None)
    args = ap.parse_args()
    phases = {p.strip() for p in args.phases.split(",")}
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    started = []
    try:
        nats_url, mongo_url = args.nats_url, args.mongo_url
        if nats_url is None:
            port = free_port()
            started.append(start_nats(port, tmp / "nats"))
            nats_url = f"nats://127.0.0.1:{port}"
        if mongo_url is None:
            port = free_port()
            started.append(start_secantus(port, tmp / "mongo"))
            mongo_url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        out: dict = {"store": "SecantusDB" if args.mongo_url is None else args.mongo_url, "cores": os.cpu_count()}
        if "throughput" in phases:
            out["throughput"] = phase_throughput(nats_url, mongo_url, args.messages, args.batch_size, tmp)
        if "latency" in phases:
            out["latency"] = phase_latency(
                nats_url, mongo_url, args.latency_rate, args.latency_seconds, args.poll_ms, args.batch_size, tmp
            )
        if "memory" in phases:
            out["memory"] = phase_memory(
                nats_url, mongo_url, args.memory_rate, args.memory_duration, args.batch_size, tmp
            )
        print(json.dumps(out, indent=2))
    finally:
        for p in reversed(started):
            p.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
