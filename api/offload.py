"""Large kline inserts validated and stored in a separate process, so that liveness stays prompt.

Why: the event loop answers ``/health/liveness``, and it needs the interpreter lock (GIL) for
every step of a request, however small. A 5,000-record kline insert is ~0.2 s of Python per
request (each record checked field by field, its decimals packed into ``Decimal128``); run in
a worker thread of the API process, it takes the lock from the loop for up to one switch
interval at a time, again and again, and two such inserts at once made the probe's p99 3-5×
its idle value even with every C call kept short (issue 20's liveness bench). In another
process that work cannot hold this process's lock at all.

What runs where:

* the API process parses the body (``api/json_body.py``: in a thread, in pieces), checks
  the request as a whole (collection, token, batch limit), holds the ``Idempotency-Key``,
  and hands the records over :data:`STORE_CHUNK` at a time, each chunk pickled on its own
  (a short C call each; one ``pickle.dumps`` of 5,000 records would be one long one);
* a worker process (:func:`_insert_in_worker`) validates each record and stores the new ones
  with its own MongoDB client, exactly as :func:`api.contract.service._insert_klines` does in
  process: the answer (counts, and the refused records with their reasons) is all that
  comes back.

Batches under :data:`OFFLOAD_MIN_RECORDS` stay in the thread pool: the hop costs more than
their validation. ``DM_API_INSERT_PROCESSES=0`` keeps every insert in process.

The pool starts its processes (``spawn``: forking a process that runs threads is unsafe) on
the first large insert, which waits ~1-2 s for them; a worker that dies (out of memory) is a
503 to retry, and the next request starts a fresh pool. ``spawn`` re-imports the server's
``__main__`` in each worker: a launcher must guard its entry point (``if __name__ ==
"__main__"``), as ``uvicorn``'s console script and ``python -m uvicorn`` do; an unguarded one
makes every large insert a 503.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from api.contract.datasets import Dataset, resolve
from api.contract.service import STORE_CHUNK, _insert_klines
from api.errors import ApiError
from dm_resources.mongo import MongoStore

# Batches with fewer records are validated in the API process (a few ms of CPU).
OFFLOAD_MIN_RECORDS = 1000
# The workers' niceness above the API process's (os.nice): on a busy host the event loop gets the CPU first.
WORKER_NICE = 10


class InsertProcesses:
    """The API's pool of insert processes (``processes`` of them; 0: none, all inserts in process)."""

    def __init__(self, processes: int, *, mongo_retry_attempts: int = 2, mongo_timeout_ms: int = 3000) -> None:
        self.processes = processes
        self.mongo_retry_attempts = mongo_retry_attempts
        self.mongo_timeout_ms = mongo_timeout_ms
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_lower_priority
                )
            return self._pool

    def insert_klines(self, mongo: MongoStore, ds: Dataset, records: list[Any]) -> dict[str, Any]:
        """:func:`~api.contract.service._insert_klines`, in a worker process when the batch is large."""
        if self.processes <= 0 or len(records) < OFFLOAD_MIN_RECORDS:
            return _insert_klines(mongo, ds, records)
        chunks = [pickle.dumps(records[i : i + STORE_CHUNK]) for i in range(0, len(records), STORE_CHUNK)]
        pool = self._executor()
        try:
            store = (mongo.url, mongo.db_name, self.mongo_retry_attempts, self.mongo_timeout_ms)
            answer: dict[str, Any] = pool.submit(_insert_in_worker, store, ds.name, chunks).result()
            return answer
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise ApiError(
                503, "the insert's worker process stopped; retry the request", loc=("server",), kind="unavailable"
            ) from None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# --- in the worker process ----------------------------------------------------------------------

_stores: dict[tuple[str, str], MongoStore] = {}


def _lower_priority() -> None:
    """Yield the CPU to the serving process: a probe waking up preempts a worker, not the other way round."""
    os.nice(WORKER_NICE)


def _insert_in_worker(store: tuple[str, str, int, int], dataset: str, chunks: list[bytes]) -> dict[str, Any]:
    url, db, attempts, timeout_ms = store
    mongo = _stores.get((url, db))
    if mongo is None:
        mongo = _stores[(url, db)] = MongoStore(
            url, db, retry_attempts=attempts, server_selection_timeout_ms=timeout_ms
        )
    records = [record for chunk in chunks for record in pickle.loads(chunk)]
    return _insert_klines(mongo, resolve(dataset), records)


__all__ = ["OFFLOAD_MIN_RECORDS", "InsertProcesses"]
