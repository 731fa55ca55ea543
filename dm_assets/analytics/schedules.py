"""Analytics every 15 minutes: one run per symbol partition, one for the cross-symbol correlation.

Each run is computed as of the tick (``as_of_ms`` in its run config) and keyed by it, so a
late or repeated evaluation of the same tick launches nothing new and a re-execution of
a run rewrites exactly the documents it wrote.
"""

from __future__ import annotations

import datetime as dt

from dagster import RunRequest

from dm_assets.analytics.assets import SYMBOL_KEYS, analytics_key, run_config
from dm_assets.analytics.jobs import analytics_job, pattern_series_job
from dm_assets.analytics.pattern_assets import PATTERN_OP
from dm_assets.schedules import per_symbol_schedule

ANALYTICS_CRON = "*/15 * * * *"


def analytics_requests(symbols: list[str], as_of: dt.datetime) -> list[RunRequest]:
    """The runs of one tick: each symbol's analytics, then the correlation over all of them."""
    ms = int(as_of.timestamp() * 1000)
    tick = as_of.astimezone(dt.UTC).strftime("%Y%m%dT%H%M")
    tags = {"dm/origin": "schedule"}
    requests = [
        RunRequest(
            run_key=f"analytics:{s}:{tick}",
            partition_key=s,
            asset_selection=SYMBOL_KEYS,
            run_config=run_config(ms, correlation=False),
            tags=tags,
        )
        for s in symbols
    ]
    requests.append(
        RunRequest(
            run_key=f"analytics:correlation:{tick}",
            asset_selection=[analytics_key("correlation")],
            run_config=run_config(ms, symbol_assets=False),
            tags=tags,
        )
    )
    return requests


analytics_schedule = per_symbol_schedule(
    "analytics_schedule",
    analytics_job,
    ANALYTICS_CRON,
    "Every 15 minutes: analytics as of the tick for every symbol partition, then correlation.",
    analytics_requests,
)


def pattern_requests(symbols: list[str], as_of: dt.datetime) -> list[RunRequest]:
    """One run per symbol: its pattern-search series as of the tick."""
    ms = int(as_of.timestamp() * 1000)
    tick = as_of.astimezone(dt.UTC).strftime("%Y%m%dT%H%M")
    return [
        RunRequest(
            run_key=f"pattern_series:{s}:{tick}",
            partition_key=s,
            run_config={"ops": {PATTERN_OP: {"config": {"as_of_ms": ms}}}},
            tags={"dm/origin": "schedule"},
        )
        for s in symbols
    ]


pattern_series_schedule = per_symbol_schedule(
    "pattern_series_schedule",
    pattern_series_job,
    ANALYTICS_CRON,
    "On the analytics cadence: each symbol's pattern-search series as of the tick.",
    pattern_requests,
)
