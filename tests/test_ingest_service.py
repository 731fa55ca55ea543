"""The ingest service end to end: a real nats-server, a real SecantusDB, the service as a subprocess.

Each test has its own subject, stream, durable consumer and database on the
session's servers, so tests do not see each other's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from bson.decimal128 import Decimal128

from dm_resources.embedded import free_port
from dm_resources.mongo import MongoStore
from ingest_service.events import decode
from ingest_service.generator import Rates, generate_session, malformed_messages
from ingest_service.progress import ConsumerProgress, drain_budget_s, read_progress, wait_drained
from ingest_service.replay import publish_lines

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Ingest:
    """Names for one test, the service processes it started, and checks against the store."""

    nats_url: str
    mongo_url: str
    tmp: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0
    published: int = 0

    def __post_init__(self) -> None:
        self.subject = f"t{self.tag}.futures.data"
        self.stream = f"T{self.tag}"
        self.durable = f"d{self.tag}"
        self.db = f"ing_{self.tag}"
        self.store = MongoStore(self.mongo_url, self.db, retry_attempts=3, server_selection_timeout_ms=5000)

    def env(self, **extra: str) -> dict[str, str]:
        self.port = free_port()
        env = {
            **os.environ,
            "DM_NATS_URL": self.nats_url,
            "DM_NATS_SUBJECT": self.subject,
            "DM_NATS_STREAM": self.stream,
            "DM_NATS_DURABLE": self.durable,
            "DM_MONGO_URL": self.mongo_url,
            "DM_MONGO_DB": self.db,
            "DM_INGEST_METRICS_PORT": str(self.port),
            "DM_INGEST_METRICS_HOST": "127.0.0.1",
        }
        env.update(extra)
        return env

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"ingest-{len(self.procs)}.log", "wb")  # noqa: SIM115 - child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest_service"],
            env=self.env(**extra),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        wait_for(lambda: self.ready() is not None, 30, "ingest HTTP endpoint", proc=proc, ingest=self)
        return proc

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> bool | None:
        try:
            return requests.get(self.url("/health/readiness"), timeout=2).status_code == 200
        except requests.RequestException:
            return None

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for line in requests.get(self.url("/metrics"), timeout=5).text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] += float(value)
        return out

    def publish(self, lines: list[bytes], rate: float = 0.0) -> int:
        n = asyncio.run(publish_lines(self.nats_url, self.subject, self.stream, lines, rate=rate, progress=False))
        self.published += n
        return n

    def acked(self) -> float:
        """Messages the service acked, from its own metrics (costs the store nothing)."""
        try:
            return self.metrics().get("ingest_messages_acked_total", 0.0)
        except requests.RequestException:
            return 0.0

    def progress(self) -> ConsumerProgress | None:
        return read_progress(self.nats_url, self.stream, self.durable)

    def drain(self, proc: subprocess.Popen[bytes], timeout: float | None = None) -> ConsumerProgress:
        """Wait on the bus until every published message is acked (so stored), then return.

        The budget grows with what was published; on failure the message carries the
        consumer's state, the store's counts (read once, then) and the service's log.
        """

        def alive() -> str | None:
            return None if proc.poll() is None else f"ingest exited ({proc.returncode})"

        return wait_drained(
            self.nats_url,
            self.stream,
            self.durable,
            min_last_seq=self.published,
            timeout=timeout if timeout is not None else drain_budget_s(self.published),
            alive=alive,
            context=lambda: f"stored: {self.counts()}\n{self.logs()}",
        )

    def counts(self) -> dict[str, int]:
        names = [
            "agg_trades",
            "klines",
            "depth_updates",
            "book_tickers",
            "tickers",
            "mark_prices",
            "funding_rates",
            "dead_letters",
        ]
        return {n: self.store.collection(n).count_documents({}) for n in names}

    def ids(self, coll: str) -> set[str]:
        return {d["_id"] for d in self.store.collection(coll).find({}, {"_id": 1})}

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("ingest-*.log")))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        # A test that stopped the store must not hide its own failure behind the clean-up's.
        with contextlib.suppress(Exception):
            self.store.client.drop_database(self.db)
        self.store.close()


def wait_for(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    ingest: Ingest | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"ingest exited ({proc.returncode}) while waiting for {what}:\n" + (ingest.logs() if ingest else "")
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n" + (ingest.logs() if ingest else ""))


@pytest.fixture
def ingest(nats_server: str, mongo_server: Any, tmp_path: Path) -> Iterator[Ingest]:
    ing = Ingest(nats_server, mongo_server.url, tmp_path)
    yield ing
    ing.close()


def session_lines(symbols: int, count: int, seed: int = 1) -> list[bytes]:
    """The first ``count`` messages of a generated session (≈1,100 messages per symbol-minute)."""
    names = [f"S{i:02d}USDT" for i in range(symbols)]
    minutes = count // (symbols * 1000) + 1
    lines = [orjson.dumps(e) for e in generate_session(names, minutes, seed=seed, rates=Rates())]
    assert len(lines) >= count
    return lines[:count]


def expected_ids(lines: list[bytes]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for raw in lines:
        for coll, doc in decode(raw).docs:
            out[coll].add(doc["_id"])
    return out


def assert_stored_exactly(ing: Ingest, lines: list[bytes]) -> None:
    for coll, ids in expected_ids(lines).items():
        assert ing.ids(coll) == ids, coll


def dec(s: str) -> Decimal128:
    return Decimal128(s)


# -- tests --------------------------------------------------------------------------------
def test_each_event_type_stored_field_by_field(ingest: Ingest) -> None:
    proc = ingest.start()
    msgs = [
        {
            "stream": "btcusdt@aggTrade",
            "data": {
                "e": "aggTrade",
                "E": 1767225600123,
                "s": "BTCUSDT",
                "a": 26129,
                "p": "87012.123456789012345678901234",
                "q": "0.00100000",
                "f": 100,
                "l": 105,
                "T": 1767225600120,
                "m": True,
                "nq": "1",
            },
        },
        {
            "stream": "btcusdt@kline_1m",
            "data": {
                "e": "kline",
                "E": 1767225660100,
                "s": "BTCUSDT",
                "k": {
                    "t": 1767225600000,
                    "T": 1767225659999,
                    "s": "BTCUSDT",
                    "i": "1m",
                    "f": 100,
                    "L": 200,
                    "o": "87000.10",
                    "c": "87010.20",
                    "h": "87020.30",
                    "l": "86990.40",
                    "v": "12.345",
                    "n": 101,
                    "x": True,
                    "q": "1074000.123456",
                    "V": "6.100",
                    "Q": "530000.5",
                    "B": "0",
                },
            },
        },
        {
            "stream": "btcusdt@kline_1m",
            "data": {
                "e": "kline",
                "E": 1767225670100,
                "s": "BTCUSDT",
                "k": {
                    "t": 1767225660000,
                    "T": 1767225719999,
                    "s": "BTCUSDT",
                    "i": "1m",
                    "f": 201,
                    "L": 210,
                    "o": "1",
                    "c": "1",
                    "h": "1",
                    "l": "1",
                    "v": "1",
                    "n": 1,
                    "x": False,
                    "q": "1",
                    "V": "1",
                    "Q": "1",
                    "B": "0",
                },
            },
        },
        {
            "stream": "btcusdt@depth@100ms",
            "data": {
                "e": "depthUpdate",
                "E": 1767225600200,
                "T": 1767225600199,
                "s": "BTCUSDT",
                "U": 1000,
                "u": 1005,
                "pu": 999,
                "b": [["87000.1", "1.500"], ["86999.9", "0.000"]],
                "a": [["87000.2", "0.00000001"]],
            },
        },
        {
            "stream": "btcusdt@ticker",
            "data": {
                "e": "24hrTicker",
                "E": 1767225600300,
                "s": "BTCUSDT",
                "p": "-120.50",
                "P": "-0.138",
                "w": "87050.12",
                "c": "87000.10",
                "Q": "0.010",
                "o": "87120.60",
                "h": "88000.00",
                "l": "86500.00",
                "v": "123456.789",
                "q": "10747000000.12",
                "O": 1767139200300,
                "C": 1767225600300,
                "F": 5000,
                "L": 9000,
                "n": 4001,
            },
        },
        {
            "stream": "btcusdt@bookTicker",
            "data": {
                "e": "bookTicker",
                "u": 400900217,
                "s": "BTCUSDT",
                "b": "87000.10",
                "B": "31.210",
                "a": "87000.20",
                "A": "40.660",
                "T": 1767225600398,
                "E": 1767225600400,
            },
        },
        {
            "stream": "btcusdt@markPrice@1s",
            "data": {
                "e": "markPriceUpdate",
                "E": 1767225601000,
                "s": "BTCUSDT",
                "p": "87001.15000000",
                "i": "87000.62659091",
                "P": "87000.25641265",
                "r": "0.00010000",
                "T": 1767254400000,
            },
        },
    ]
    ingest.publish([orjson.dumps(m) for m in msgs])
    ingest.drain(proc)

    c = ingest.store.collection
    assert c("agg_trades").find_one({"_id": "BTCUSDT:26129"}) == {
        "_id": "BTCUSDT:26129",
        "symbol": "BTCUSDT",
        "agg_id": 26129,
        "price": dec("87012.123456789012345678901234"),
        "qty": dec("0.00100000"),
        "first_trade_id": 100,
        "last_trade_id": 105,
        "trade_time": 1767225600120,
        "event_time": 1767225600123,
        "buyer_is_maker": True,
    }
    assert list(c("klines").find({})) == [
        {
            "_id": "BTCUSDT:1m:1767225600000",
            "symbol": "BTCUSDT",
            "interval": "1m",
            "open_time": 1767225600000,
            "close_time": 1767225659999,
            "open": dec("87000.10"),
            "high": dec("87020.30"),
            "low": dec("86990.40"),
            "close": dec("87010.20"),
            "volume": dec("12.345"),
            "quote_volume": dec("1074000.123456"),
            "trades": 101,
            "taker_buy_volume": dec("6.100"),
            "taker_buy_quote_volume": dec("530000.5"),
            "event_time": 1767225660100,
            "source": "ws",
        }
    ]
    assert c("depth_updates").find_one({}) == {
        "_id": "BTCUSDT:1005",
        "symbol": "BTCUSDT",
        "event_time": 1767225600200,
        "transaction_time": 1767225600199,
        "first_update_id": 1000,
        "final_update_id": 1005,
        "prev_final_update_id": 999,
        "bids": [[dec("87000.1"), dec("1.500")], [dec("86999.9"), dec("0.000")]],
        "asks": [[dec("87000.2"), dec("0.00000001")]],
    }
    assert c("tickers").find_one({}) == {
        "_id": "BTCUSDT:1767225600300",
        "symbol": "BTCUSDT",
        "event_time": 1767225600300,
        "price_change": dec("-120.50"),
        "price_change_percent": dec("-0.138"),
        "weighted_avg_price": dec("87050.12"),
        "last_price": dec("87000.10"),
        "last_qty": dec("0.010"),
        "open_price": dec("87120.60"),
        "high_price": dec("88000.00"),
        "low_price": dec("86500.00"),
        "volume": dec("123456.789"),
        "quote_volume": dec("10747000000.12"),
        "open_time": 1767139200300,
        "close_time": 1767225600300,
        "first_trade_id": 5000,
        "last_trade_id": 9000,
        "trade_count": 4001,
    }
    assert c("book_tickers").find_one({}) == {
        "_id": "BTCUSDT:400900217",
        "symbol": "BTCUSDT",
        "update_id": 400900217,
        "event_time": 1767225600400,
        "transaction_time": 1767225600398,
        "bid_price": dec("87000.10"),
        "bid_qty": dec("31.210"),
        "ask_price": dec("87000.20"),
        "ask_qty": dec("40.660"),
    }
    assert c("mark_prices").find_one({}) == {
        "_id": "BTCUSDT:1767225601000",
        "symbol": "BTCUSDT",
        "event_time": 1767225601000,
        "mark_price": dec("87001.15000000"),
        "index_price": dec("87000.62659091"),
        "estimated_settle_price": dec("87000.25641265"),
        "funding_rate": dec("0.00010000"),
        "next_funding_time": 1767254400000,
    }
    assert c("funding_rates").find_one({}) == {
        "_id": "BTCUSDT:1767254400000",
        "symbol": "BTCUSDT",
        "funding_time": 1767254400000,
        "funding_rate": dec("0.00010000"),
        "mark_price": dec("87001.15000000"),
        "event_time": 1767225601000,
    }
    assert c("dead_letters").count_documents({}) == 0
    # Every price read back has exactly the digits that were sent.
    price = c("agg_trades").find_one({})["price"].to_decimal()
    assert str(price) == "87012.123456789012345678901234"

    # A newer funding update replaces the record; an older (late, redelivered) one does not.
    base = msgs[-1]["data"]
    newer = {**base, "E": base["E"] + 5000, "r": "0.00020000"}
    older = {**base, "E": base["E"] - 5000, "r": "0.00900000"}
    ingest.publish([orjson.dumps({"stream": "btcusdt@markPrice@1s", "data": d}) for d in (newer, older)])
    ingest.drain(proc)
    assert c("mark_prices").count_documents({}) == 3
    fund = c("funding_rates").find_one({})
    assert (fund["funding_rate"], fund["event_time"]) == (dec("0.00020000"), newer["E"])


def test_published_twice_stored_once(ingest: Ingest) -> None:
    lines = session_lines(4, 10_000, seed=11)
    assert len(lines) == 10_000
    proc = ingest.start()
    assert ingest.publish(lines) == 10_000
    assert ingest.publish(lines) == 10_000
    ingest.drain(proc)
    assert ingest.acked() == 20_000
    assert_stored_exactly(ingest, lines)
    m = ingest.metrics()
    docs = sum(len(v) for c, v in expected_ids(lines).items() if c != "funding_rates")
    dup_non_funding = sum(
        v for k, v in m.items() if k.startswith("ingest_documents_duplicate_total") and "funding_rates" not in k
    )
    assert dup_non_funding == docs  # the whole second pass was recognised as already stored
    assert ingest.counts()["dead_letters"] == 0


def test_malformed_messages_dead_lettered_and_good_ones_stored(ingest: Ingest) -> None:
    good = session_lines(3, 3000, seed=3)
    bad = malformed_messages(1000, seed=9)
    rng = random.Random(1)
    mixed = list(good)
    for raw, _ in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), raw)
    assert len(mixed) == len(good) + 1000
    proc = ingest.start()
    ingest.publish(mixed)
    ingest.drain(proc)
    assert_stored_exactly(ingest, good)
    letters = {bytes(d["raw"]): d for d in ingest.store.collection("dead_letters").find({})}
    assert len(letters) == 1000
    for raw, reason in bad:
        d = letters[raw]
        assert reason in d["reason"]
        assert d["subject"] == ingest.subject and d["_id"].startswith("dl:")
        assert isinstance(d["received_at"], int)
    assert ingest.ready()


def test_mongo_outage_recovers_without_restart(ingest: Ingest, mongo_server: Any) -> None:
    lines = session_lines(2, 9000, seed=21)
    proc = ingest.start(DM_INGEST_ACK_WAIT_S="10")
    publisher = threading.Thread(target=ingest.publish, args=(lines, 300.0))
    publisher.start()
    try:
        wait_for(lambda: ingest.acked() > 200, 60, "first acked writes", proc=proc, ingest=ingest)
        mongo_server.stop()
        wait_for(lambda: ingest.ready() is False, 30, "readiness false during the outage", proc=proc, ingest=ingest)
        time.sleep(20)
        assert proc.poll() is None and ingest.ready() is False
    finally:
        if mongo_server.proc is None:
            mongo_server.start()
        publisher.join(120)
    assert ingest.published == len(lines)
    ingest.drain(proc)
    assert_stored_exactly(ingest, lines)
    wait_for(lambda: ingest.ready() is True, 30, "readiness back", proc=proc, ingest=ingest)
    assert proc.poll() is None and len(ingest.procs) == 1
    assert ingest.metrics()["ingest_store_retries_total"] > 0


def test_sigterm_exits_zero_and_leaves_nothing_stored_unacked(ingest: Ingest) -> None:
    import nats

    lines = session_lines(4, 15_000, seed=31)
    proc = ingest.start(DM_INGEST_ACK_WAIT_S="5")
    publisher = threading.Thread(target=ingest.publish, args=(lines,))
    publisher.start()
    wait_for(lambda: ingest.acked() > 1000, 60, "writes under way", proc=proc, ingest=ingest)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0  # the contract: exit 0 within 5 s
    publisher.join(60)

    async def ack_floor() -> int:
        nc = await nats.connect(ingest.nats_url)
        info = await nc.jetstream().consumer_info(ingest.stream, ingest.durable)
        await nc.close()
        return info.ack_floor.stream_seq

    # One replica acks batch after batch in stream order, so the acked messages are the
    # prefix up to the ack floor. Exactly that prefix is stored: no batch was stored and
    # left unacked, none acked and left unstored.
    floor = asyncio.run(ack_floor())
    assert 0 < floor < len(lines)
    assert_stored_exactly(ingest, lines[:floor])
    # And a new replica picks up the rest.
    proc2 = ingest.start(DM_INGEST_ACK_WAIT_S="5")
    ingest.drain(proc2)
    assert_stored_exactly(ingest, lines)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_midway_through_100k_loses_and_doubles_nothing(ingest: Ingest) -> None:
    lines = session_lines(10, 100_000, seed=41)
    assert len(lines) == 100_000
    assert ingest.publish(lines) == 100_000
    proc = ingest.start(DM_INGEST_ACK_WAIT_S="5")
    total = sum(len(v) for v in expected_ids(lines).values())
    wait_for(lambda: ingest.acked() > len(lines) // 3, 120, "a third acked", proc=proc, ingest=ingest)
    proc.kill()
    proc.wait(10)
    partial = sum(ingest.counts().values())
    assert 0 < partial < total
    proc2 = ingest.start(DM_INGEST_ACK_WAIT_S="5")
    ingest.drain(proc2)
    assert_stored_exactly(ingest, lines)
    # Nothing doubled: the stored count is the count of distinct documents the messages produce.
    assert sum(ingest.counts().values()) == total


def test_nats_restart_reconnects_and_resumes(mongo_server: Any, tmp_path: Path) -> None:
    from dm_resources.embedded import start_nats

    port = free_port()
    nats_proc = start_nats(port, tmp_path / "nats")
    ing = Ingest(f"nats://127.0.0.1:{port}", mongo_server.url, tmp_path)
    try:
        lines = session_lines(2, 4000, seed=51)
        proc = ing.start()
        ing.publish(lines[:2000])
        ing.drain(proc)
        assert_stored_exactly(ing, lines[:2000])
        nats_proc.stop()
        wait_for(lambda: ing.ready() is False, 30, "readiness false without NATS", proc=proc, ingest=ing)
        nats_proc = start_nats(port, tmp_path / "nats")  # same port, same JetStream store
        ing.publish(lines[2000:])
        ing.drain(proc)
        assert_stored_exactly(ing, lines)
        wait_for(lambda: ing.ready() is True, 30, "readiness back", proc=proc, ingest=ing)
        assert proc.poll() is None
    finally:
        ing.close()
        nats_proc.stop()


def test_second_replica_on_a_taken_metrics_port_exits_2_with_one_line(ingest: Ingest) -> None:
    first = ingest.start()
    taken = ingest.port
    env = ingest.env(DM_INGEST_METRICS_PORT=str(taken))
    second = subprocess.run(
        [sys.executable, "-m", "ingest_service"], env=env, cwd=ROOT, capture_output=True, timeout=120
    )
    err = second.stderr.decode(errors="replace").strip()
    assert second.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"DM_INGEST_METRICS_PORT={taken}" in err and "already in use" in err and "0 for any free port" in err
    assert first.poll() is None  # the running replica is untouched


def test_metrics_port_zero_picks_a_free_port_and_logs_it(ingest: Ingest) -> None:
    log_path = ingest.tmp / "ingest-port0.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest_service"],
            env=ingest.env(DM_INGEST_METRICS_PORT="0"),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    ingest.procs.append(proc)

    def logged_port() -> int | None:
        for line in log_path.read_bytes().splitlines():
            if line.startswith(b"{"):
                rec = orjson.loads(line)
                if rec.get("event") == "http_started":
                    return int(rec["port"])
        return None

    wait_for(lambda: logged_port() is not None, 30, "the http_started log line", proc=proc, ingest=ingest)
    port = logged_port()
    assert port and port != 0
    assert requests.get(f"http://127.0.0.1:{port}/health/liveness", timeout=5).status_code == 200


def test_connect_nats_with_attempts_gives_up_naming_the_url() -> None:
    from ingest_service.service import NatsUnreachableError, connect_nats

    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    with pytest.raises(NatsUnreachableError, match=f"NATS at {url} not reachable after 2 attempts"):
        # The outer bound only turns "never gives up" into a failure instead of a hang.
        asyncio.run(asyncio.wait_for(connect_nats(url, "t", attempts=2, attempt_timeout_s=1.0), 60))
