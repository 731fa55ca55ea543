"""The run queue's per-symbol locks (dm_resources/run_coordinator.py), through Dagster's own dequeue pass.

Runs are submitted through our coordinator on a real (SQLite) instance and the queue daemon's own
selection (``QueuedRunCoordinatorDaemon._get_runs_to_dequeue``, with Dagster's tag-limit counter)
says which queued runs it would launch: runs over disjoint symbols together, a run writing a
symbol that a running (or already selected) run writes never.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, DagsterRunStatus, SubmitRunContext
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test, instance_for_test
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from dm_resources.contracts import SYMBOLS_PARTITIONS_NAME
from dm_resources.run_coordinator import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SYMBOL_TAG,
    UnknownSymbolRange,
    lock_key,
    range_label,
    run_symbols,
)

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "ATOMUSDT", "ADAUSDT"]
LIMIT = {"key": SYMBOL_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    coordinator = {
        "module": "dm_resources.run_coordinator",
        "class": "SymbolTaggingRunCoordinator",
        "config": {"max_concurrent_runs": 10, "tag_concurrency_limits": [LIMIT]},
    }
    with instance_for_test(overrides={"run_coordinator": coordinator}) as inst:
        inst.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, SYMBOLS)
        yield inst


ORIGIN = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("dm"), "__repository__").get_job_origin("candles")


def submit(instance: DagsterInstance, tags: dict[str, str]) -> str:
    run = create_run_for_test(instance, job_name="candles", tags=tags, remote_job_origin=ORIGIN)
    instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]
    return run.run_id


def rng(first: str, last: str) -> dict[str, str]:
    return {RANGE_START_TAG: f"2026-01-01|{first}", RANGE_END_TAG: f"2026-06-30|{last}"}


def dequeued(instance: DagsterInstance) -> set[str]:
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    return {r.run_id for r in daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)}


def event(instance: DagsterInstance, run_id: str, kind: DagsterEventType) -> None:
    instance.handle_run_event(run_id, DagsterEvent(kind.value, job_name="candles"))


def test_runs_over_disjoint_symbols_run_together_and_a_shared_symbol_waits(instance: DagsterInstance) -> None:
    a = submit(instance, rng("BTCUSDT", "SOLUSDT"))  # BTC ETH SOL
    b = submit(instance, rng("BNBUSDT", "ADAUSDT"))  # BNB ATOM ADA: disjoint from a
    c = submit(instance, {"dagster/partition": "2026-02-01|ETHUSDT", SYMBOL_TAG: "ETHUSDT"})  # a gap repair inside a
    d = submit(instance, rng("ETHUSDT", "BNBUSDT"))  # overlaps a and b
    e = submit(instance, {})  # the catalog: no symbol, no lock

    tags = instance.get_run_by_id(a).tags  # type: ignore[union-attr]
    assert tags[SYMBOL_TAG] == range_label("BTCUSDT", "SOLUSDT")
    assert {k for k in tags if k.startswith("dm/lock.")} == {lock_key(s) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")}
    assert not [k for k in instance.get_run_by_id(e).tags if k.startswith("dm/lock.")]  # type: ignore[union-attr]

    # One pass: a, then b beside it (before the locks, both held the one "*" slot), e; c and d wait.
    assert dequeued(instance) == {a, b, e}
    for run_id in (a, b, e):
        event(instance, run_id, DagsterEventType.RUN_START)
    assert dequeued(instance) == set()  # c waits for a (ETHUSDT), d for a and b
    event(instance, a, DagsterEventType.RUN_SUCCESS)
    assert dequeued(instance) == {c}  # d still waits for b (BNBUSDT); then for c (ETHUSDT)
    event(instance, c, DagsterEventType.RUN_START)
    event(instance, b, DagsterEventType.RUN_FAILURE)
    assert dequeued(instance) == set()
    event(instance, c, DagsterEventType.RUN_SUCCESS)
    assert dequeued(instance) == {d}
    assert instance.get_run_by_id(d).status == DagsterRunStatus.QUEUED  # type: ignore[union-attr]


def test_one_symbol_runs_of_one_symbol_wait_for_each_other(instance: DagsterInstance) -> None:
    first = submit(instance, {"dagster/partition": "2026-02-01|SOLUSDT"})
    second = submit(instance, rng("SOLUSDT", "SOLUSDT"))  # a one-symbol range of the same symbol
    other = submit(instance, {"dagster/partition": "2026-02-01|BTCUSDT"})
    assert dequeued(instance) == {first, other}
    event(instance, first, DagsterEventType.RUN_START)
    assert second not in dequeued(instance)


def test_a_range_whose_ends_are_not_symbol_partitions_is_refused_naming_them(instance: DagsterInstance) -> None:
    with pytest.raises(UnknownSymbolRange, match=r"BTCUSDT\.\.DOGEUSDT.*DOGEUSDT"):
        submit(instance, rng("BTCUSDT", "DOGEUSDT"))
    assert run_symbols(rng("SOLUSDT", "BTCUSDT"), lambda: SYMBOLS) == ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    assert run_symbols({"dagster/partition": "2026-02-01"}, lambda: SYMBOLS) == ()  # a date: no symbol
