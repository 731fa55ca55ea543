"""The run queue, with every run holding a lock per symbol it writes, whoever launched it.

Two runs that write one symbol race on its day and year buckets and fetch the same REST pages
twice, so the queue never runs them at once. Dagster's tag limits allow one value per tag key
and a run per value, which fits a one-symbol run but not a run over a range of symbols. So:

* every run carries ``dm/lock.<SYMBOL>`` for each symbol it writes (:func:`run_symbols`), set by
  the queue itself on submission (:meth:`SymbolTaggingRunCoordinator.submit_run`), because the
  runs the backfill daemon splits out of a UI "Materialize…" backfill carry only their partition
  range;
* the queue's limits (:meth:`SymbolTaggingRunCoordinator.get_run_queue_config`) are the configured
  ones plus one run at a time per ``dm/lock.<SYMBOL>`` key, for every symbol partition, read from
  the instance on each dequeue pass (one indexed read).

Two runs over disjoint symbol ranges therefore run side by side (a 10-symbol history in two runs
of five), and a run over ``BTCUSDT..SOLUSDT`` waits for, and blocks, any run writing ``ETHUSDT``.
Before this, a several-symbol run held one shared ``*`` slot: two disjoint ranges queued behind
each other, while a one-symbol run inside a range did not wait for it.

``dm/symbol`` stays the label an operator filters by (``BTCUSDT``, or ``BTCUSDT..SOLUSDT`` for a
range), with its own limit per value in ``dagster.yaml``: it keeps one-symbol runs apart even for
a symbol that is not (yet) a partition. A launcher's own ``dm/symbol`` (sensors, schedules, the
API) is kept. Runs without a symbol (the catalog, retention) hold no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from dagster import DagsterRun, QueuedRunCoordinator, SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import RunQueueConfig

from dm_resources.contracts import SYMBOLS_PARTITIONS_NAME, is_symbol

SYMBOL_TAG = "dm/symbol"
LOCK_PREFIX = "dm/lock."
PARTITION_TAG = "dagster/partition"
SYMBOL_DIMENSION_TAG = "dagster/partition/symbol"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


class UnknownSymbolRange(ValueError):
    """A range run whose end symbols are not symbol partitions: nobody could say what it writes."""


def lock_key(symbol: str) -> str:
    """The tag a run writing ``symbol`` holds (one run at a time per key)."""
    return f"{LOCK_PREFIX}{symbol}"


def range_label(first: str, last: str) -> str:
    """``dm/symbol`` of a run over several symbols, e.g. ``BTCUSDT..SOLUSDT``."""
    return f"{first}..{last}"


def _symbol_of(key: str | None) -> str | None:
    """The symbol of ``date|SYMBOL`` or ``SYMBOL``; None for keys without one (a date, nothing)."""
    if not key:
        return None
    last = key.rsplit("|", 1)[-1]
    return last if is_symbol(last) else None


def _range_ends(tags: Mapping[str, str]) -> tuple[str, str] | None:
    start, end = _symbol_of(tags.get(RANGE_START_TAG)), _symbol_of(tags.get(RANGE_END_TAG))
    return (start, end) if start and end else None


def _single_symbol(tags: Mapping[str, str]) -> str | None:
    sym = tags.get(SYMBOL_DIMENSION_TAG) or _symbol_of(tags.get(PARTITION_TAG))
    return sym if sym and is_symbol(sym) else None


def symbol_tag(tags: Mapping[str, str]) -> str | None:
    """The ``dm/symbol`` label a run with these tags should carry (None: no symbol)."""
    if tags.get(SYMBOL_TAG):
        return tags[SYMBOL_TAG]
    single = _single_symbol(tags)
    if single:
        return single
    ends = _range_ends(tags)
    if ends:
        return ends[0] if ends[0] == ends[1] else range_label(*ends)
    return None


def run_symbols(tags: Mapping[str, str], order: Callable[[], Sequence[str]]) -> tuple[str, ...]:
    """The symbols a run with these tags writes; ``order`` gives the symbol partitions in Dagster's order.

    A range over several symbols takes every symbol between its ends in that order (what Dagster
    runs for a multi-partition range); ``order`` is only read for such a range.
    """
    ends = _range_ends(tags)
    if ends and ends[0] != ends[1]:
        symbols = list(order())
        unknown = [s for s in ends if s not in symbols]
        if unknown:
            missing = ", ".join(unknown)
            raise UnknownSymbolRange(f"range {range_label(*ends)}: {missing} not among the symbol partitions")
        i, j = symbols.index(ends[0]), symbols.index(ends[1])
        return tuple(symbols[min(i, j) : max(i, j) + 1])
    if ends:
        return (ends[0],)
    single = _single_symbol(tags)
    if single:
        return (single,)
    own = tags.get(SYMBOL_TAG)
    return (own,) if own and is_symbol(own) else ()


def with_symbol_tag(tags: Mapping[str, str], partition_key: str | None = None) -> dict[str, str]:
    """``tags`` plus ``dm/symbol`` for a run of ``partition_key`` (what sensors and schedules request)."""
    out = dict(tags)
    tag = symbol_tag({**out, **({PARTITION_TAG: str(partition_key)} if partition_key else {})})
    if tag:
        out[SYMBOL_TAG] = tag
    return out


class SymbolTaggingRunCoordinator(QueuedRunCoordinator):
    """Dagster's queued run coordinator, with a lock per symbol a run writes (see the module)."""

    def _symbol_partitions(self) -> Sequence[str]:
        return self._instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME)

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        add: dict[str, str] = {}
        tag = symbol_tag(run.tags)
        if tag and run.tags.get(SYMBOL_TAG) != tag:
            add[SYMBOL_TAG] = tag
        for sym in run_symbols(run.tags, self._symbol_partitions):
            if lock_key(sym) not in run.tags:
                add[lock_key(sym)] = "1"
        if add:
            self._instance.add_run_tags(run.run_id, add)
        return super().submit_run(context)

    def get_run_queue_config(self) -> RunQueueConfig:
        """The configured limits plus one run at a time per symbol lock (every symbol partition)."""
        base = super().get_run_queue_config()
        locks = [{"key": lock_key(s), "limit": 1} for s in self._symbol_partitions()]
        return base._replace(tag_concurrency_limits=[*base.tag_concurrency_limits, *locks])


def instance_yaml(max_concurrent_runs: int = 4, extra: str = "") -> str:
    """A local Dagster instance (SQLite storage) queued through this coordinator, as dagster.yaml text.

    The embedded stack, the benchmarks and the tests that start ``dagster dev`` use it, so their runs
    are tagged and limited as in production (``dagster.yaml``).
    """
    return (
        "run_coordinator:\n"
        "  module: dm_resources.run_coordinator\n"
        "  class: SymbolTaggingRunCoordinator\n"
        "  config:\n"
        f"    max_concurrent_runs: {int(max_concurrent_runs)}\n"
        "    dequeue_interval_seconds: 1\n"
        "    tag_concurrency_limits:\n"
        f"      - key: {SYMBOL_TAG}\n"
        "        value:\n"
        "          applyLimitPerUniqueValue: true\n"
        "        limit: 1\n"
        "telemetry:\n"
        "  enabled: false\n" + extra
    )
