"""Analytics every 15 minutes: one run per symbol partition, one for the cross-symbol correlation.

Each run is computed as of the tick (``as_of_ms`` in its run config) and keyed by it, so a
late or repeated evaluation of the same tick launches nothing new and a re-execution of
a run rewrites exactly the documents it wrote.
"""

from __future__ import annotations

import datetime as dt

from dagster import RunRequest

from dm_assets.analytics.assets import SYMBOL_KEYS, analytics_key, run_config
from dm_assets.analytics.jobs import analytics_job
from dm_assets.schedules import per_symbol_schedule


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
    "*/15 * * * *",
    "Every 15 minutes: analytics as of the tick for every symbol partition, then correlation.",
    analytics_requests,
)
