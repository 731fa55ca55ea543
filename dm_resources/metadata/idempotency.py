"""Exactly-once writes: ``Idempotency-Key`` answers and server receipts, stored with the write they describe.

The pattern is the IETF httpapi draft "The Idempotency-Key HTTP Header Field" (Stripe's):

* A request carrying a key first **claims** it in a short transaction of its own: a row
  ``(caller, key)`` with the payload's fingerprint, ``state = in_flight`` and a lease. The claim
  is committed at once, so a concurrent repeat sees it and is told 409 (:class:`KeyInFlight`).
* The write then runs in **one transaction that also sets the row to ``done`` with the answer**
  (status and JSON body). The answer and the write commit together or not at all: no write
  without its answer, no answer without its write.
* A repeat of a completed request gets the stored answer and writes nothing (:class:`Replay`);
  a repeat with another payload is :class:`KeyReused` (422). A request whose write fails
  (a refused record, a conflict) releases its claim: errors are not stored, the caller may
  fix the request and send it again under the same key.
* A claim whose request died (process killed before its write committed) blocks repeats only
  until its lease ends (``lease_s``); then a repeat takes the key over. ``owner`` makes the
  late original notice the takeover and write nothing.
* Keys expire ``ttl_s`` after their claim (24 h by default, never less): an expired key is
  forgotten, and :func:`prune` deletes expired rows in bounded batches.

**A lost COMMIT.** The store retries a write transaction on a lost connection
(``SqlStore._write``), and a connection can be lost after the server committed. Every write
made through :meth:`WriteOnce.write` therefore stores a row in its own transaction — the key's
answer, or, for a request sent without a key, a server-side *receipt* (``caller = "~receipt"``,
a fresh random key, kept ``RECEIPT_TTL_S``). The retried transaction looks for that row first:
found, the first attempt committed and its answer is returned instead of writing again.

Writes outside the metadata database (MongoDB klines) cannot share the transaction:
:meth:`WriteOnce.run` stores the answer right after the write. Those writes are idempotent by
their natural key (a kline's ``_id``), so a crash between write and answer only means the
repeat writes nothing new and answers with what it found.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from dm_resources.metadata import models
from dm_resources.metadata.engine import SqlStore, utcnow

log = logging.getLogger(__name__)

KEYS: Table = models.IdempotencyKey.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
MIN_TTL_S = 86_400  # the documented floor: a key is remembered at least 24 h
DEFAULT_TTL_S = MIN_TTL_S
DEFAULT_LEASE_S = 60.0
RECEIPT_CALLER = "~receipt"
RECEIPT_TTL_S = 3600
PRUNE_BATCH = 1000
PRUNE_EVERY_S = 300.0
MAX_KEY_CHARS = 255
CLAIM_ATTEMPTS = 3

Answer = dict[str, Any]
Work = Callable[[Connection], Answer]


@dataclass(frozen=True)
class KeyedRequest:
    """What identifies one request: who sent it (a token digest), its key, and its payload's fingerprint."""

    caller: str
    key: str
    fingerprint: str
    request: str = ""  # "PUT /api/v1/mysql/positions", shown to operators


class KeyReused(Exception):
    """The key was used before with another payload (HTTP 422)."""

    def __init__(self, key: str, request: str) -> None:
        super().__init__(
            f"Idempotency-Key {key[:60]!r} was used for another request ({request or 'a different payload'}); "
            "a key names one request: use a new key for a new request"
        )


class KeyInFlight(Exception):
    """The first request with this key is still being processed (HTTP 409)."""

    def __init__(self, key: str, retry_after_s: float) -> None:
        super().__init__(f"a request with Idempotency-Key {key[:60]!r} is still in progress; retry after it completes")
        self.retry_after_s = max(1.0, retry_after_s)


class Replay(Exception):
    """The request completed before: ``status`` and ``body`` (JSON bytes) are its stored answer."""

    def __init__(self, key: str, status: int, body: bytes) -> None:
        super().__init__(f"replay of Idempotency-Key {key[:60]!r}")
        self.key = key
        self.status = status
        self.body = body


def _encode(answer: Answer) -> str:
    return orjson.dumps(answer, default=str).decode()


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class WriteOnce:
    """One request's writes, exactly once (see the module docstring).

    ``WriteOnce(store)`` (no key) still stores a receipt with each write, so a lost COMMIT cannot
    apply it twice; ``WriteOnce(store, KeyedRequest(...))`` adds the key's claim, replay and checks.
    ``store`` is the metadata store that keeps the keys (and holds the SQL writes).
    """

    def __init__(
        self,
        store: SqlStore,
        request: KeyedRequest | None = None,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        if ttl_s < MIN_TTL_S:
            raise ValueError(f"idempotency keys are kept at least {MIN_TTL_S} s (24 h), not {ttl_s}")
        self.store = store
        self.request = request
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self.clock = clock
        self._owner: str | None = None

    @property
    def seed(self) -> str | None:
        """A stable seed for ids the write must derive (the same on every repeat of this request)."""
        if self.request is None:
            return None
        return f"{self.request.caller}:{self.request.key}"

    # -- the two kinds of write ---------------------------------------------------------------

    def write(self, work: Work, *, status: int = 200) -> Answer:
        """Run ``work`` in one write transaction of the metadata store that also stores this request's answer."""
        store = self.store
        if self.request is None:
            return self._with_receipt(store, work, status)
        self._claim(store)
        try:
            return store._write(lambda conn: self._finish(conn, work, status))
        except BaseException:
            self._release(store)
            raise
        finally:
            maybe_prune(store)

    def run(self, fn: Callable[[], Answer], *, status: int = 200) -> Answer:
        """A write outside the metadata store (idempotent by its own natural keys); its answer is stored after it."""
        store = self.store
        if self.request is None:
            return fn()
        self._claim(store)
        try:
            answer = fn()
        except BaseException:
            self._release(store)
            raise
        store._write(lambda conn: self._finish(conn, lambda _c: answer, status))
        maybe_prune(store)
        return answer

    # -- steps ------------------------------------------------------------------------------

    def _claim(self, store: SqlStore) -> None:
        req = self.request
        assert req is not None
        owner = uuid.uuid4().hex
        for attempt in range(CLAIM_ATTEMPTS):
            try:
                store._write(lambda conn: self._claim_in(conn, req, owner))
                self._owner = owner
                return
            except IntegrityError:  # a concurrent first claim of the same key won the insert
                if attempt == CLAIM_ATTEMPTS - 1:
                    raise KeyInFlight(req.key, self.lease_s) from None

    def _row(self, conn: Connection, caller: str, key: str, *, lock: bool = True) -> Any:
        stmt = select(KEYS).where(KEYS.c.caller == caller, KEYS.c.key == key)
        if lock and conn.dialect.name in ("mysql", "mariadb", "postgresql"):
            stmt = stmt.with_for_update()
        return conn.execute(stmt).first()

    def _claim_in(self, conn: Connection, req: KeyedRequest, owner: str) -> None:
        now = self.clock()
        lease = now + dt.timedelta(seconds=self.lease_s)
        row = self._row(conn, req.caller, req.key)
        if row is not None and (_aware(row.expires_at) or now) <= now:
            conn.execute(delete(KEYS).where(KEYS.c.id == row.id))
            row = None
        if row is not None and row.owner == owner:
            return  # this claim committed and its answer was lost: a retry of the claim's own transaction
        if row is None:
            conn.execute(
                insert(KEYS).values(
                    caller=req.caller,
                    key=req.key,
                    fingerprint=req.fingerprint,
                    request=req.request[:255],
                    state="in_flight",
                    owner=owner,
                    created_at=now,
                    lease_until=lease,
                    expires_at=now + dt.timedelta(seconds=self.ttl_s),
                )
            )
            return
        if row.fingerprint != req.fingerprint:
            raise KeyReused(req.key, row.request)
        if row.state == "done":
            raise Replay(req.key, int(row.status or 200), (row.body or "null").encode())
        held_until = _aware(row.lease_until) or now
        if held_until > now:
            raise KeyInFlight(req.key, (held_until - now).total_seconds())
        # The claim's lease ran out without its write committing (the write sets ``done`` in its
        # own transaction): that request died. This one takes the key over.
        conn.execute(update(KEYS).where(KEYS.c.id == row.id).values(owner=owner, lease_until=lease))

    def _finish(self, conn: Connection, work: Work, status: int) -> Answer:
        req = self.request
        assert req is not None
        row = self._row(conn, req.caller, req.key)
        if row is not None and row.state == "done" and row.fingerprint == req.fingerprint:
            # This transaction is a retry after a lost COMMIT: the first attempt committed.
            return dict(orjson.loads(row.body or "{}"))
        if row is None or row.owner != self._owner:
            raise KeyInFlight(req.key, self.lease_s)  # taken over after our lease ran out: write nothing
        answer = work(conn)
        conn.execute(
            update(KEYS)
            .where(KEYS.c.id == row.id)
            .values(state="done", status=status, body=_encode(answer), lease_until=None)
        )
        return answer

    def _release(self, store: SqlStore) -> None:
        req, owner = self.request, self._owner
        if req is None or owner is None:
            return
        try:
            store._write(
                lambda conn: conn.execute(
                    delete(KEYS).where(
                        KEYS.c.caller == req.caller,
                        KEYS.c.key == req.key,
                        KEYS.c.owner == owner,
                        KEYS.c.state == "in_flight",
                    )
                )
            )
        except Exception as exc:  # the lease frees the key anyway
            log.warning("could not release Idempotency-Key claim: %s", exc)

    def _with_receipt(self, store: SqlStore, work: Work, status: int) -> Answer:
        receipt = uuid.uuid4().hex

        def run(conn: Connection) -> Answer:
            row = self._row(conn, RECEIPT_CALLER, receipt, lock=False)
            if row is not None:  # a retry after a lost COMMIT: the first attempt committed
                return dict(orjson.loads(row.body or "{}"))
            answer = work(conn)
            now = self.clock()
            conn.execute(
                insert(KEYS).values(
                    caller=RECEIPT_CALLER,
                    key=receipt,
                    fingerprint="",
                    request="",
                    state="done",
                    status=status,
                    body=_encode(answer),
                    created_at=now,
                    expires_at=now + dt.timedelta(seconds=RECEIPT_TTL_S),
                )
            )
            return answer

        try:
            return store._write(run)
        finally:
            maybe_prune(store)


# --- pruning ---------------------------------------------------------------------------------


def prune(store: SqlStore, *, now: dt.datetime | None = None, batch: int = PRUNE_BATCH) -> int:
    """Delete expired keys and receipts, ``batch`` rows per transaction; returns how many."""
    now = now or utcnow()
    total = 0
    while True:

        def one(conn: Connection) -> int:
            ids = [
                r.id for r in conn.execute(select(KEYS.c.id).where(KEYS.c.expires_at <= now).limit(batch)).fetchall()
            ]
            if ids:
                conn.execute(delete(KEYS).where(KEYS.c.id.in_(ids)))
            return len(ids)

        n = store._write(one)
        total += n
        if n < batch:
            return total


_pruned_at: dict[str, float] = {}
_prune_lock = threading.Lock()


def maybe_prune(store: SqlStore, *, every_s: float = PRUNE_EVERY_S) -> None:
    """Prune at most once per ``every_s`` per database and process: writers keep the table small."""
    name = store.url.render_as_string(hide_password=True)
    now = time.monotonic()
    with _prune_lock:
        if now - _pruned_at.get(name, -every_s) < every_s:
            return
        _pruned_at[name] = now
    try:
        n = prune(store)
        if n:
            log.info("pruned %d expired idempotency keys and receipts", n)
    except Exception as exc:  # pruning is housekeeping: never fails a write
        log.warning("pruning idempotency keys failed: %s", exc)


def count_keys(store: SqlStore, caller: str | None = None) -> int:
    """How many keys (of ``caller``) are stored: for tests and operators."""
    stmt = select(KEYS.c.id)
    if caller is not None:
        stmt = stmt.where(KEYS.c.caller == caller)
    with store._read() as conn:
        return len(conn.execute(stmt).fetchall())


__all__ = [
    "DEFAULT_TTL_S",
    "MAX_KEY_CHARS",
    "MIN_TTL_S",
    "KeyInFlight",
    "KeyReused",
    "KeyedRequest",
    "Replay",
    "WriteOnce",
    "count_keys",
    "maybe_prune",
    "prune",
]
