"""Ingest service benchmarks on the embedded store; prints one JSON document.

Phases (``--phases``, default all four):

* ``cpu``: our service beside a naive reference ingest (``bench/naive_ingest.py``: fetch
  500, build documents, ``insert_many(ordered=False)``, ack each, no validation), each as
  its own process on a fresh stream and database, on the same messages (``--cpu-messages``
  aggTrades, then a mixed session) published while it drains. Rate = messages / (first
  publish → consumer drained, read from NATS); CPU per message from ``/proc/PID/stat``.

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

    .venv/bin/python bench/bench_ingest.py --phases cpu --cpu-messages 30000 --cpu-rounds 2
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
from ingest_service.config import IngestSettings  # noqa: E402
from ingest_service.events import decode  # noqa: E402
from ingest_service.generator import generate_session  # noqa: E402
from ingest_service.progress import drain_budget_s, wait_drained  # noqa: E402
from ingest_service.replay import publish_lines  # noqa: E402
from ingest_service.service import connect_nats, ensure_stream  # noqa: E402
from ingest_service.writer import MessageInfo, plan_batch  # noqa: E402


def names_for(tag: str) -> tuple[str, str]:
    return f"b{tag}.data", f"B{tag}"


class IngestProcess:
    def __init__(
        self,
        nats_url: str,
        mongo_url: str,
        db: str,
        tag: str,
        batch_size: int,
        log_dir: Path,
        root: Path = ROOT,
    ) -> None:
        self.port = free_port()
        self.nats_url = nats_url
        self.subject, self.stream = names_for(tag)
        self.durable = f"d{tag}"
        self.log_path = log_dir / f"ingest-{tag}.log"
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
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingest_service"], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT
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

    def drain(self, n: int, timeout: float | None = None) -> None:
        """Wait on the bus (not the store) until ``n`` messages are acked; fail with the state reached."""
        wait_drained(
            self.nats_url,
            self.stream,
            self.durable,
            min_last_seq=n,
            timeout=timeout if timeout is not None else drain_budget_s(n),
            poll_s=0.1,
            alive=lambda: None if self.proc.poll() is None else f"ingest exited ({self.proc.returncode})",
            context=lambda: self.log_path.read_text(errors="replace")[-2000:],
        )

    def cpu_s(self) -> float:
        return process_cpu_s(self.proc.pid)

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


NAIVE = ROOT / "bench" / "naive_ingest.py"


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NaiveProcess:
    """``bench/naive_ingest.py`` on its own stream and durable (created here with the service's config)."""

    def __init__(self, nats_url: str, mongo_url: str, db: str, tag: str, log_dir: Path) -> None:
        self.nats_url = nats_url
        self.subject, self.stream = names_for(tag)
        self.durable = f"d{tag}"
        self.log_path = log_dir / f"naive-{tag}.log"
        # Index work like ours: our collections and indexes (aggTrades land in ``agg_trades``),
        # and one (symbol, event time) index on each per-event-type collection it writes.
        with MongoStore(mongo_url, db) as store:
            store.ensure_indexes()
            for coll in ("kline", "depthUpdate", "24hrTicker", "bookTicker", "markPriceUpdate"):
                store.client[db][coll].create_index([("s", 1), ("E", 1)])
        asyncio.run(self._create_consumer())
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, str(NAIVE), nats_url, self.stream, self.durable, mongo_url, db],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while asyncio.run(self._waiting()) == 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"naive ingest did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    async def _create_consumer(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        ing = IngestSettings()
        nc = await connect_nats(self.nats_url, "bench", attempts=3)
        try:
            js = nc.jetstream(timeout=5)
            await ensure_stream(js, self.stream, self.subject, ing)
            cfg = ConsumerConfig(
                durable_name=self.durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ing.ack_wait_s,
                max_ack_pending=ing.max_ack_pending,
                max_deliver=-1,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=self.subject,
            )
            await js.add_consumer(self.stream, cfg)
        finally:
            await nc.close()

    async def _waiting(self) -> int:
        """Pull requests waiting on the consumer: the loop is up once its first fetch is parked."""
        nc = await connect_nats(self.nats_url, "bench", attempts=3)
        try:
            return (await nc.jetstream(timeout=5).consumer_info(self.stream, self.durable)).num_waiting or 0
        finally:
            await nc.close()

    drain = IngestProcess.drain

    def cpu_s(self) -> float:
        return process_cpu_s(self.proc.pid)

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
        ing.drain(n)
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
        ing.drain(n)
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


def agg_trades_only(n: int, symbols: int = 10, seed: int = 2) -> list[bytes]:
    names = [f"A{i:02d}USDT" for i in range(symbols)]
    out: list[bytes] = []
    for env in generate_session(names, n // (symbols * 300) + 2, seed=seed):
        if env["data"]["e"] == "aggTrade":
            out.append(orjson.dumps(env))
            if len(out) == n:
                break
    assert len(out) == n, "session too short"
    return out


def _contender_run(
    kind: str, nats_url: str, mongo_url: str, lines: list[bytes], batch: int, log_dir: Path, before: Path | None
) -> dict:
    """Start one ingest (ours, the naive one, or ours from an older tree) on a fresh stream and database,
    publish while it drains."""
    tag = uuid.uuid4().hex[:8]
    db = f"cpu_{kind}_{tag}"
    proc: IngestProcess | NaiveProcess
    if kind == "naive":
        proc = NaiveProcess(nats_url, mongo_url, db, tag, log_dir)
    else:
        root = before if kind == "before" and before is not None else ROOT
        proc = IngestProcess(nats_url, mongo_url, db, tag, batch, log_dir, root=root)
    try:
        cpu0 = proc.cpu_s()
        t0 = time.perf_counter()
        pub = threading.Thread(
            target=lambda: asyncio.run(publish_lines(nats_url, proc.subject, proc.stream, lines, progress=False))
        )
        pub.start()
        proc.drain(len(lines))
        seconds = time.perf_counter() - t0
        cpu = proc.cpu_s() - cpu0
        pub.join()
    finally:
        proc.stop()
    with MongoStore(mongo_url, db) as store:
        store.client.drop_database(db)
    return {
        "msg_per_s": round(len(lines) / seconds, 1),
        "cpu_us_per_msg": round(cpu / len(lines) * 1e6, 1),
        "seconds": round(seconds, 2),
        "cpu_s": round(cpu, 2),
    }


def phase_cpu(
    nats_url: str, mongo_url: str, n: int, rounds: int, batch: int, log_dir: Path, before: Path | None = None
) -> dict:
    """Ours beside ``bench/naive_ingest.py`` on the same messages, published while each drains.

    Rounds alternate which contender goes first so the machine's other load hits both
    alike; each figure is the best of its rounds (highest rate, lowest CPU per message),
    medians beside.
    """
    out: dict = {
        "anchor": "bench/naive_ingest.py: fetch 500, orjson, build documents, insert_many(ordered=False), "
        "ack each; no validation",
        "ours": "python -m ingest_service: strict validation of every event, dead letters, metrics",
    }
    for name, lines in (("agg_trades", agg_trades_only(n)), ("mixed_session", session(n))):
        kinds = ["naive", "ours"] + (["before"] if before is not None else [])
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for r in range(rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                runs[kind].append(_contender_run(kind, nats_url, mongo_url, lines, batch, log_dir, before))
        best = {
            k: {
                "msg_per_s": max(x["msg_per_s"] for x in v),
                "cpu_us_per_msg": min(x["cpu_us_per_msg"] for x in v),
            }
            for k, v in runs.items()
        }
        median = {
            k: {
                "msg_per_s": round(statistics.median(x["msg_per_s"] for x in v), 1),
                "cpu_us_per_msg": round(statistics.median(x["cpu_us_per_msg"] for x in v), 1),
            }
            for k, v in runs.items()
        }
        out[name] = {
            "messages": n,
            **best,
            "median": median,
            "median_rate_ratio_ours_over_naive": round(median["ours"]["msg_per_s"] / median["naive"]["msg_per_s"], 3),
            "median_cpu_ratio_ours_over_naive": round(
                median["ours"]["cpu_us_per_msg"] / median["naive"]["cpu_us_per_msg"], 3
            ),
            "rate_ratio_ours_over_naive": round(best["ours"]["msg_per_s"] / best["naive"]["msg_per_s"], 3),
            "cpu_ratio_ours_over_naive": round(best["ours"]["cpu_us_per_msg"] / best["naive"]["cpu_us_per_msg"], 3),
            "runs": runs,
        }
    out["target"] = "rate ratio >= 1.0 and CPU ratio <= 1.0"
    return out


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
        ing.drain(n)
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
    ap.add_argument("--phases", default="cpu,throughput,latency,memory")
    ap.add_argument("--cpu-messages", type=int, default=30_000, help="messages per workload of the cpu phase")
    ap.add_argument("--cpu-rounds", type=int, default=2, help="alternating rounds per contender (best of)")
    ap.add_argument(
        "--cpu-before",
        type=Path,
        default=None,
        help="a checkout of an older version (e.g. `git archive REV | tar -x -C DIR`): its ingest_service "
        "runs as a third contender",
    )
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
        if "cpu" in phases:
            out["cpu"] = phase_cpu(
                nats_url, mongo_url, args.cpu_messages, args.cpu_rounds, args.batch_size, tmp, args.cpu_before
            )
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
