"""The run queue, with the per-symbol tag set on every run whoever launched it.

``dagster.yaml`` (and the Helm values) limit runs per ``dm/symbol`` value to one at a time: two
runs of one symbol race on its day and year buckets and fetch the same REST pages twice. A tag
limit only works if runs carry the tag, and the runs the backfill daemon splits out of a UI
"Materialize…" backfill carry only the backfill's tags (the same for every run) plus their
partition range. So the queue itself sets the tag, on submission, from what every run has:

* ``dagster/partition`` — ``2026-01-05|BTCUSDT`` (date × symbol) or ``BTCUSDT`` (per-symbol assets);
* ``dagster/asset_partition_range_start`` / ``_end`` — a range run: one symbol when both ends
  name the same symbol, else :data:`MULTI_SYMBOL` (runs over several symbols hold one slot of
  their own: one such bulk run at a time);
* a ``dm/symbol`` the launcher set already (sensors, schedules, the API) is kept.

Runs without a symbol (the catalog, retention) are left alone. :func:`symbol_tag` is the rule,
used by the API and the sensors too, so everything agrees on it.
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster import DagsterRun, QueuedRunCoordinator, SubmitRunContext

from dm_resources.contracts import is_symbol

SYMBOL_TAG = "dm/symbol"
MULTI_SYMBOL = "*"
PARTITION_TAG = "dagster/partition"
SYMBOL_DIMENSION_TAG = "dagster/partition/symbol"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def _symbol_of(key: str | None) -> str | None:
    """The symbol of ``date|SYMBOL`` or ``SYMBOL``; None for keys without one (a date, nothing)."""
    if not key:
        return None
    last = key.rsplit("|", 1)[-1]
    return last if is_symbol(last) else None


def symbol_tag(tags: Mapping[str, str]) -> str | None:
    """The ``dm/symbol`` value a run with these tags should carry (None: no symbol)."""
    if tags.get(SYMBOL_TAG):
        return tags[SYMBOL_TAG]
    for key in (SYMBOL_DIMENSION_TAG, PARTITION_TAG):
        sym = _symbol_of(tags.get(key)) if key == PARTITION_TAG else tags.get(key)
        if sym and is_symbol(sym):
            return sym
    start, end = _symbol_of(tags.get(RANGE_START_TAG)), _symbol_of(tags.get(RANGE_END_TAG))
    if start and end:
        return start if start == end else MULTI_SYMBOL
    return None


def with_symbol_tag(tags: Mapping[str, str], partition_key: str | None = None) -> dict[str, str]:
    """``tags`` plus ``dm/symbol`` for a run of ``partition_key`` (what sensors and schedules request)."""
    out = dict(tags)
    tag = symbol_tag({**out, **({PARTITION_TAG: str(partition_key)} if partition_key else {})})
    if tag:
        out[SYMBOL_TAG] = tag
    return out


class SymbolTaggingRunCoordinator(QueuedRunCoordinator):
    """Dagster's queued run coordinator that tags each submitted run with its symbol first."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        tag = symbol_tag(run.tags)
        if tag and run.tags.get(SYMBOL_TAG) != tag:
            self._instance.add_run_tags(run.run_id, {SYMBOL_TAG: tag})
        return super().submit_run(context)


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
