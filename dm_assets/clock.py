"""One clock per run: the instant every asset of a run judges its partitions against.

A partition of the current day is judged "as of" some instant: which minutes have closed,
how much of the day a book must cover, how fresh the data is. If each step read the wall
clock, the candles built at 12:00:03 and the audit that reads them at 12:00:41 would judge
different days: a minute that closed in between is a gap for the audit but was never due for
the build. So every step of a run uses the run's time:

* the run's ``dm/as_of`` tag (epoch ms) when it has one: a frozen instant, for reproducible
  re-runs and tests;
* else the time the run was created (the schedule tick or the launch), the same for every
  step however long the run queues or runs;
* else (a step invoked outside a run record) the wall clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dm_resources.contracts import now_ms

if TYPE_CHECKING:
    from dagster import AssetExecutionContext, OpExecutionContext

AS_OF_TAG = "dm/as_of"


def run_time_ms(context: AssetExecutionContext | OpExecutionContext) -> int:
    """The run's instant in epoch ms (see the module docstring)."""
    tag = context.run.tags.get(AS_OF_TAG)
    if tag is not None:
        try:
            return int(tag)
        except ValueError as exc:
            raise ValueError(f"run tag {AS_OF_TAG}={tag!r} is not epoch milliseconds") from exc
    record = context.instance.get_run_record_by_id(context.run.run_id)
    if record is not None and record.create_timestamp is not None:
        return int(record.create_timestamp.timestamp() * 1000)
    return now_ms()
