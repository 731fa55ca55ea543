"""The consumer loop: JetStream durable pull consumer → bulk MongoDB writes → ack.

Delivery: at-least-once from JetStream (explicit acks, sent only after every document
a message produced is written) plus deterministic ``_id``s in MongoDB gives
exactly-once *storage*. A lost ack, a SIGKILL or a second replica only ever causes a
redelivery, which the unique ``_id`` turns into a counted duplicate.

Pipeline: a fetcher task pulls batches into a small bounded queue while the writer
decodes and writes the previous batch in a worker thread (pymongo is blocking), so
fetching overlaps writing. When MongoDB fails the writer retries the same batch with
capped exponential backoff (never nak: that would only cause a redelivery storm),
the queue fills, the fetcher stops, readiness turns false, and every held message
gets "in progress" so JetStream does not redeliver it meanwhile. Writes that
succeeded before the failure are not repeated (a plan drops collections as they land).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import nats
import nats.errors
import nats.js.errors
from bson.errors import InvalidDocument
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
    wait_random_exponential,
)

from dm_resources.mongo import MongoStore, StoreWriteError, WriteResult
from dm_resources.settings import Settings, SettingsError
from ingest_service.config import IngestSettings
from ingest_service.events import EVENT_TYPES, decode
from ingest_service.metrics import HealthServer, IngestMetrics
from ingest_service.pull import PullConsumer
from ingest_service.writer import BatchPlan, MessageInfo, plan_batch, stored_count, write_klines, write_newest_wins

log = logging.getLogger("ingest_service")


# -- NATS helpers shared with replay and feed ------------------------------------------
class NatsUnreachableError(ConnectionError):
    """The first connection to NATS failed ``attempts`` times (only with a bound)."""


async def _connect_once(url: str, name: str, timeout_s: float, callbacks: dict[str, Any]) -> NATS:
    """One bounded connection attempt.

    nats-py retries the first connection by itself, forever, when reconnects are
    unlimited (``max_reconnect_attempts=-1``, which we want once connected), so the
    bound has to come from outside: the attempt is cancelled after ``timeout_s`` and
    the half-built client closed.
    """
    nc = NATS()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=[u.strip() for u in url.split(",")],
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds as a float; nats-py's hint says int
                connect_timeout=2,
                allow_reconnect=True,
                **callbacks,
            ),
            timeout_s,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 1.0)
        raise
    return nc


async def connect_nats(
    url: str,
    name: str,
    *,
    on_state: Callable[[str], Any] | None = None,
    attempts: int = 0,
    attempt_timeout_s: float = 5.0,
) -> NATS:
    """Connect, retrying the first connection too (``attempts`` 0 = forever); reconnect forever after.

    With ``attempts`` > 0 it raises :class:`NatsUnreachableError` naming ``url`` after that
    many attempts of at most ``attempt_timeout_s`` each (plus backoff of at most 5 s between).
    """

    holder: list[NATS] = []

    async def _cb(state: str) -> None:
        if not holder or holder[0].is_closed:
            return  # a failed first attempt being closed, or our own close(): not an outage
        log.warning("nats %s", state, extra={"event": f"nats_{state}"})
        if on_state is not None:
            on_state(state)

    async def disconnected() -> None:
        await _cb("disconnected")

    async def reconnected() -> None:
        await _cb("reconnected")

    async def error(exc: Exception) -> None:
        log.debug("nats error: %r", exc)

    callbacks = {"disconnected_cb": disconnected, "reconnected_cb": reconnected, "error_cb": error}
    retrying = AsyncRetrying(
        retry=retry_if_exception_type((TimeoutError, OSError, nats.errors.NoServersError)),
        stop=stop_after_attempt(attempts) if attempts > 0 else stop_never,
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
        before_sleep=lambda rs: log.warning(
            "nats at %s not reachable (%r); retry %d in %.1fs",
            url,
            rs.outcome.exception() if rs.outcome else None,
            rs.attempt_number,
            rs.upcoming_sleep,
            extra={"event": "nats_connect_retry"},
        ),
    )
    t0 = time.monotonic()
    try:
        nc: NATS = await retrying(_connect_once, url, name, attempt_timeout_s, callbacks)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        why = f"{type(last).__name__}: {last}" if str(last) else f"no connection within {attempt_timeout_s:g}s"
        raise NatsUnreachableError(
            f"NATS at {url} not reachable after {attempts} attempts in {time.monotonic() - t0:.1f}s ({why})"
        ) from last
    holder.append(nc)
    return nc


def stream_config(name: str, subjects: list[str], ingest: IngestSettings) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=ingest.stream_max_age_s or None,
        max_bytes=ingest.stream_max_bytes or None,
        max_msgs=ingest.stream_max_msgs or None,
        num_replicas=ingest.stream_replicas,
    )


async def ensure_stream(js: JetStreamContext, name: str, subject: str, ingest: IngestSettings) -> None:
    """Create the stream, or bring an existing one to the configured subject and retention limits."""
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(stream_config(name, [subject], ingest))
            log.info("created stream %s for %s", name, subject)
            return
        except nats.js.errors.BadRequestError:  # another replica won the race
            info = await js.stream_info(name)
    subjects = sorted(set(info.config.subjects or []) | {subject})
    await js.update_stream(stream_config(name, subjects, ingest))


def _stream_seq(msg: Msg) -> int:
    return int(msg.metadata.sequence.stream)


class MetricsPortError(SettingsError):
    """The metrics/health port cannot be bound: a configuration problem, reported in one line."""


def metrics_port_problem(host: str, port: int, exc: OSError) -> str:
    """Why the port could not be bound, naming the variables that fix it."""
    if exc.errno == errno.EADDRINUSE:
        why = f"{host}:{port} is already in use (another ingest replica on this host?)"
    else:
        why = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return (
        f"DM_INGEST_METRICS_PORT={port}: {why}; set DM_INGEST_METRICS_PORT to a free port, "
        "or 0 for any free port (the chosen port is logged)"
    )


# -- the service ---------------------------------------------------------------------
@dataclass
class Job:
    msgs: list[Msg]
    plan: BatchPlan | None = None
    fetched_at: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)


class IngestService:
    """One ingest replica. ``run()`` until ``request_stop()``; any number share the durable consumer."""

    def __init__(
        self, settings: Settings, ingest: IngestSettings | None = None, metrics: IngestMetrics | None = None
    ) -> None:
        self.settings = settings
        self.ingest = ingest or IngestSettings()
        self.metrics = metrics or IngestMetrics()
        client: MongoClient = MongoClient(
            settings.mongo_url,
            serverSelectionTimeoutMS=self.ingest.mongo_timeout_ms,
            connectTimeoutMS=self.ingest.mongo_timeout_ms,
            socketTimeoutMS=30_000,
            tz_aware=True,
        )
        # One attempt per call: the service's own loop retries forever with backoff.
        self.store = MongoStore(settings.mongo_url, settings.mongo_db, retry_attempts=1, client=client)
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.puller: PullConsumer | None = None
        self.http: HealthServer | None = None
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=self.ingest.prefetch_batches)
        self._held_jobs: dict[int, Job] = {}
        self._stop = asyncio.Event()
        self._stopping = False
        self._deadline = float("inf")
        self._store_ok = False
        self._indexes_ok = False
        self._store_failing = False
        self._subscribed = False
        self._heartbeat = time.monotonic()
        self.started = asyncio.Event()

    # -- probes -----------------------------------------------------------------------
    def liveness(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self._heartbeat
        return age < 60, {"loop_heartbeat_age_s": round(age, 2)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        nats_ok = bool(self.nc is not None and self.nc.is_connected)
        detail = {
            "nats": nats_ok,
            "mongo": self._store_ok and not self._store_failing,
            "subscribed": self._subscribed,
            "stopping": self._stopping,
        }
        ok = nats_ok and detail["mongo"] and self._subscribed and not self._stopping
        self.metrics.ready.set(1 if ok else 0)
        return ok, detail

    def request_stop(self) -> None:
        if not self._stopping:
            log.info("stop requested: finishing the in-flight batch", extra={"event": "stopping"})
            self._stopping = True
            self._deadline = time.monotonic() + self.ingest.shutdown_grace_s
            self._stop.set()

    # -- lifecycle --------------------------------------------------------------------
    async def run(self) -> int:
        s, ing = self.settings, self.ingest
        try:
            self.http = HealthServer(
                ing.metrics_host, ing.metrics_port, self.metrics.registry, self.liveness, self.readiness
            ).start()
        except OSError as exc:
            self.store.close()
            raise MetricsPortError(metrics_port_problem(ing.metrics_host, ing.metrics_port, exc)) from None
        log.info(
            "metrics and health on %s:%d",
            ing.metrics_host,
            self.http.port,
            extra={"event": "http_started", "port": self.http.port},
        )
        tasks: list[asyncio.Task[Any]] = []
        try:
            self._store_ok = await asyncio.to_thread(self._prepare_store)
            self.nc = await self._until_stopped(connect_nats(s.nats_url, "dm-ingest"))
            if self.nc is None:
                return 0
            self.js = self.nc.jetstream(timeout=5)
            ok = await self._until_stopped(self._subscribe())
            if not ok:
                return 0
            log.info(
                "consuming %s from stream %s as %s",
                s.nats_subject,
                s.nats_stream,
                s.nats_durable,
                extra={"event": "consuming", "batch_size": ing.batch_size},
            )
            self.started.set()
            fetcher = asyncio.create_task(self._fetch_loop(), name="fetch")
            writer = asyncio.create_task(self._write_loop(), name="write")
            tasks = [
                fetcher,
                writer,
                asyncio.create_task(self._health_loop(), name="health"),
                asyncio.create_task(self._progress_loop(), name="progress"),
            ]
            stop_wait = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([fetcher, writer, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            failed = False
            for t in done:
                if t is not stop_wait and t.exception() is not None:
                    # A bug, not an outage (those are retried inside): exit non-zero so the
                    # supervisor restarts us; unacked messages are redelivered.
                    log.error("task %s failed", t.get_name(), exc_info=t.exception())
                    failed = True
                    self.request_stop()
            stop_wait.cancel()
            remaining = max(0.1, self._deadline - time.monotonic())
            _, pending = await asyncio.wait([fetcher, writer], timeout=remaining)
            for t in pending:
                log.warning("task %s did not finish within the grace period", t.get_name())
                t.cancel()
            return 1 if failed else 0
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close()

    async def _until_stopped(self, aw: Awaitable[Any]) -> Any:
        """Await ``aw`` unless a stop comes first (start-up must not outlive SIGTERM)."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return None

    def _prepare_store(self) -> bool:
        try:
            self.store.ensure_indexes()
            self._indexes_ok = True
            return True
        except PyMongoError as exc:
            # Not fatal: indexes are created on the first successful write cycle (see _write_loop).
            log.warning("MongoDB not reachable at start (%s); will keep retrying", exc)
            return False

    async def _subscribe(self) -> bool:
        """Create/update the stream and durable consumer and bind to it, retrying forever with backoff."""
        assert self.js is not None
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((TimeoutError, nats.errors.Error)),
            stop=stop_never,
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
            before_sleep=lambda rs: log.warning(
                "stream/consumer setup failed (%r); retry %d in %.1fs",
                rs.outcome.exception() if rs.outcome else None,
                rs.attempt_number,
                rs.upcoming_sleep,
            ),
        )
        await retrying(self._subscribe_once)
        return True

    async def _subscribe_once(self) -> None:
        s, ing = self.settings, self.ingest
        assert self.js is not None
        await ensure_stream(self.js, s.nats_stream, s.nats_subject, ing)
        cfg = ConsumerConfig(
            durable_name=s.nats_durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ing.ack_wait_s,
            max_ack_pending=ing.max_ack_pending,
            max_deliver=-1,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=s.nats_subject,
            max_waiting=512,
        )
        # Create, or update an existing durable to the configured ack_wait/max_ack_pending.
        await self.js.add_consumer(s.nats_stream, cfg)
        assert self.nc is not None
        if self.puller is None:
            self.puller = await PullConsumer(self.nc, s.nats_stream, s.nats_durable).start()
        self._subscribed = True

    async def _close(self) -> None:
        if self.puller is not None:
            await self.puller.stop()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.flush(), 1.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 1.0)
        if self.http is not None:
            self.http.stop()
        self.store.close()
        log.info("ingest stopped", extra={"event": "stopped"})

    # -- fetch --------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        assert self.puller is not None
        ing = self.ingest
        try:
            while not self._stopping:
                self._heartbeat = time.monotonic()
                try:
                    msgs = await self.puller.fetch(ing.batch_size, ing.fetch_timeout_s)
                except TimeoutError:  # includes nats TimeoutError / FetchTimeoutError
                    continue
                except nats.errors.Error as exc:
                    log.debug("fetch failed: %r", exc)
                    await asyncio.sleep(0.2)
                    continue
                if not msgs:
                    continue
                job = Job(msgs)
                if self._stopping:
                    await self._nak(job)
                    break
                self._hold(job)
                # Decode here, not in the writer: decoding batch N+1 overlaps the store writing batch N.
                job.plan = await asyncio.to_thread(self._plan, job.msgs)
                await self._queue.put(job)
        finally:
            # Delivered to our inbox after the last fetch: hand back for another replica now.
            leftover = self.puller.take_buffered()
            if leftover:
                await self._nak(Job(leftover))
            await self._queue.put(None)

    def _hold(self, job: Job) -> None:
        self._held_jobs[id(job)] = job

    def _release(self, job: Job) -> None:
        self._held_jobs.pop(id(job), None)

    async def _nak(self, job: Job) -> None:
        """Give back fetched-but-unstarted messages at shutdown so another replica takes them now."""
        for m in job.msgs:
            with contextlib.suppress(Exception):
                await m.nak()
        self._release(job)

    # -- write --------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            job = await self._queue.get()
            if job is None:
                return
            if self._stopping:
                # Not started yet: hand it back instead of holding shutdown on it.
                await self._nak(job)
                continue
            await self._handle(job)

    async def _handle(self, job: Job) -> None:
        m = self.metrics
        m.batch_size.observe(len(job.msgs))
        assert job.plan is not None
        received: Counter[str] = Counter()
        dead: Counter[str] = Counter()
        open_klines = 0
        for dec in job.plan.decoded:
            # Only known types as labels: an unknown type is attacker-chosen text (unbounded cardinality).
            label = dec.event_type if dec.event_type in EVENT_TYPES else "unknown"
            received[label] += 1
            if dec.error is not None:
                dead[label] += 1
            elif not dec.docs and dec.event_type == "kline":
                open_klines += 1
        # One increment per label and batch: per-message ``labels().inc()`` was a visible CPU cost.
        for label, n in received.items():
            m.received.labels(label).inc(n)
        for label, n in dead.items():
            m.dead_lettered.labels(label).inc(n)
        if open_klines:
            m.open_klines.inc(open_klines)
        if not await self._write_with_retry(job):
            log.warning(
                "shutdown during a store outage: %d messages left unacked for redelivery",
                len(job.msgs),
                extra={"event": "unacked_at_shutdown"},
            )
            self._release(job)
            return
        await self._ack(job)
        self._release(job)

    @staticmethod
    def _plan(msgs: list[Msg]) -> BatchPlan:
        received = int(time.time() * 1000)
        # ``m.metadata`` parses the reply subject: only dead letters need the sequence.
        infos = [MessageInfo(m.data, m.subject, partial(_stream_seq, m)) for m in msgs]
        return plan_batch(infos, [decode(i.data) for i in infos], received)

    async def _write_with_retry(self, job: Job) -> bool:
        """Write the batch, retrying store errors forever, or until a stop's grace period runs out.

        Returns False only at shutdown during an outage (the batch stays unacked and is
        redelivered). Capped full-jitter backoff; while stopping, no sleep or attempt
        outlives the grace period (one attempt may block for the Mongo timeout).
        """
        assert job.plan is not None
        plan = job.plan
        backoff = wait_random_exponential(multiplier=0.1, max=self.ingest.retry_max_backoff_s)

        def wait(rs: RetryCallState) -> float:
            delay = backoff(rs)
            if self._stopping:
                delay = min(delay, max(0.0, self._deadline - time.monotonic() - 1.0))
            return delay

        def give_up(rs: RetryCallState) -> bool:
            return self._stopping and time.monotonic() >= self._deadline - self.ingest.mongo_timeout_ms / 1000

        def failed(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            self._store_failing = True
            self._store_ok = False
            self.metrics.store_retries.inc()
            log.warning(
                "MongoDB write failed (%s: %s); retry %d",
                type(exc).__name__,
                str(exc)[:200],
                rs.attempt_number,
                extra={"event": "store_retry", "attempt": rs.attempt_number},
            )

        async def attempt() -> None:
            self._heartbeat = time.monotonic()
            await asyncio.to_thread(self._write_plan, plan)

        retrying = AsyncRetrying(retry=retry_if_exception_type(PyMongoError), stop=give_up, wait=wait, after=failed)
        try:
            await retrying(attempt)
        except RetryError:
            return False
        if self._store_failing:
            retries = retrying.statistics.get("attempt_number", 1) - 1
            log.info(
                "MongoDB writes succeed again after %d retries",
                retries,
                extra={"event": "store_recovered", "retries": retries},
            )
        self._store_failing = False
        self._store_ok = True
        return True

    async def _progress_loop(self) -> None:
        """Reset ack_wait of every message held longer than a third of it (queued, slow or retried batches).

        Without this a store outage, or a store slower than ``ack_wait`` for three
        batches, would make JetStream redeliver messages we still hold: duplicates and
        extra load exactly when the store is struggling.
        """
        period = max(0.2, self.ingest.ack_wait_s / 3)
        while True:
            await asyncio.sleep(period / 2)
            now = time.monotonic()
            for job in list(self._held_jobs.values()):
                if now - job.last_progress >= period:
                    job.last_progress = now
                    for m in job.msgs:
                        with contextlib.suppress(Exception):
                            await m.in_progress()

    def _write_plan(self, plan: BatchPlan) -> None:
        """Write what is left of the plan, collection by collection (worker thread)."""
        if not self._indexes_ok:
            self.store.ensure_indexes()
            self._indexes_ok = True
        while (coll := plan.next_collection()) is not None:
            docs = plan.pending[coll]
            t0 = time.perf_counter()
            try:
                res = self._write(coll, docs)
            except (StoreWriteError, InvalidDocument) as exc:
                res = self._isolate(plan, coll, str(exc))
            self.metrics.write_seconds.labels(coll).observe(time.perf_counter() - t0)
            self.metrics.stored.labels(coll).inc(stored_count(res))
            self.metrics.duplicates.labels(coll).inc(res.duplicates)
            plan.done(coll)

    def _write(self, coll: str, docs: list[dict[str, Any]]) -> WriteResult:
        if coll == "funding_rates":
            return write_newest_wins(self.store.collection(coll), docs)
        if coll == "klines":
            return write_klines(self.store.collection(coll), docs)
        return self.store.insert_idempotent(coll, docs)

    def _isolate(self, plan: BatchPlan, coll: str, reason: str) -> WriteResult:
        """The store refused part of a bulk write for a non-transient reason: find and dead-letter the culprits.

        Transient errors still propagate (the batch is retried); only documents the
        store rejects on their own become dead letters, so one bad document never
        blocks the stream.
        """
        log.error("store rejected part of %s (%s); writing one by one", coll, reason)
        total = WriteResult()
        owners = plan.owners[coll]
        for doc, owner in zip(list(plan.pending[coll]), owners, strict=True):
            try:
                total += self._write(coll, [doc])
            except (StoreWriteError, InvalidDocument) as exc:
                if coll == "dead_letters":
                    log.error("dead letter %s refused by the store, dropped: %s", doc.get("_id"), exc)
                else:
                    plan.dead_letter(owner, f"store rejected {coll} document: {exc}")
        return total

    async def _ack(self, job: Job) -> None:
        """Ack every message, then one flush: the server has the acks when it returns.

        Acks are fire-and-forget publishes; the flush (PING/PONG) makes the batch's acks
        reach the server before we move on, at one round trip per batch. A lost ack only
        means a redelivery, which the store answers with a duplicate.
        """
        assert self.nc is not None
        for m in job.msgs:
            try:
                await m.ack()
            except nats.errors.Error as exc:
                log.debug("ack failed: %r", exc)
        try:
            await self.nc.flush(timeout=5)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("ack flush failed (%r): the batch may be redelivered and counted as duplicates", exc)
        self.metrics.acked.inc(len(job.msgs))

    # -- health -------------------------------------------------------------------------
    async def _health_loop(self) -> None:
        while not self._stopping:
            if not self._store_failing:
                try:
                    self._store_ok = await asyncio.to_thread(self.store.ping)
                except PyMongoError:
                    self._store_ok = False
            if self.js is not None and self._subscribed and self.nc is not None and self.nc.is_connected:
                try:
                    info = await self.js.consumer_info(self.settings.nats_stream, self.settings.nats_durable)
                    self.metrics.consumer_pending.set(info.num_pending or 0)
                    self.metrics.consumer_ack_pending.set(info.num_ack_pending or 0)
                except (TimeoutError, nats.errors.Error) as exc:
                    log.debug("consumer_info failed: %r", exc)
            self.readiness()
            await asyncio.sleep(2.0)
