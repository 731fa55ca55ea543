"""Dagster retries for the candle step: transient store errors only.

A ``RetryPolicy`` retries a step on *any* exception; a bug or bad data retried three times is three
times the work and the same error. So the step body runs inside :func:`transient_only`: a store
that was briefly unreachable (MongoDB/SecantusDB connection or server-selection errors, a bucket
that kept changing under concurrent writers, a metadata database that dropped the connection,
deadlocked or was locked) propagates and is retried with exponential backoff and jitter; anything
else becomes a ``Failure`` that Dagster does not retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Backoff, Failure, Jitter, RetryPolicy

from dm_resources.candle_store import ConcurrentWriteError
from dm_resources.mongo import TRANSIENT_ERRORS

# Three retries after ~2, ~4, ~8 s (±50 %): long enough for a store fail-over or a restarted
# SecantusDB, short enough that a run does not stall for minutes on a real outage.
CANDLE_RETRY_POLICY = RetryPolicy(max_retries=3, delay=2.0, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def is_transient_store_error(exc: BaseException) -> bool:
    """True for store errors that a later attempt may not meet."""
    from dm_resources.metadata.engine import _is_transient

    if isinstance(exc, (*TRANSIENT_ERRORS, ConcurrentWriteError)):
        return True
    return _is_transient(exc)


@contextmanager
def transient_only() -> Iterator[None]:
    """Let transient store errors through (Dagster retries them); turn the rest into a final Failure."""
    try:
        yield
    except Failure:
        raise
    except Exception as exc:
        if is_transient_store_error(exc):
            raise
        raise Failure(description=f"{type(exc).__name__}: {exc}"[:2000], allow_retries=False) from exc
