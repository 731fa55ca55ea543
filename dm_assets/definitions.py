"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here.

Resources are built from the ``DM_*`` environment (pydantic-settings), so the same
definitions run on the embedded stack (SecantusDB, SQLite) and in production
(MongoDB, MySQL, dagster-postgres) without code changes.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from dm_assets.analytics.assets import ANALYTICS_ASSETS
from dm_assets.analytics.schedules import analytics_job, analytics_schedule
from dm_assets.backfills.sensors import backfill_tracking_sensor
from dm_assets.candles.assets import CANDLE_ASSETS
from dm_assets.candles.jobs import audit_job, candles_job
from dm_assets.candles.schedules import audit_schedule
from dm_assets.candles.sensors import gap_sensor, symbol_discovery_sensor
from dm_assets.catalog.assets import CATALOG_ASSETS
from dm_assets.catalog.schedules import catalog_job, catalog_schedule
from dm_assets.funding.assets import FUNDING_ASSETS
from dm_assets.orderbook.assets import ORDERBOOK_ASSETS, orderbook_job, orderbook_schedule
from dm_assets.quality.assets import QUALITY_ASSETS
from dm_assets.raw.assets import RAW_ASSET_SPECS
from dm_assets.raw.sensors import raw_observation_sensor
from dm_assets.retention.assets import RETENTION_ASSETS, retention_job, retention_schedule
from dm_resources.resources import ResourceSet


def build_defs(resources: ResourceSet | None = None) -> Definitions:
    """Definitions with the given resources; tests pass their own servers' URLs."""
    res = resources or ResourceSet()
    return Definitions(
        assets=[
            *RAW_ASSET_SPECS,
            *CANDLE_ASSETS,
            *QUALITY_ASSETS,
            *ANALYTICS_ASSETS,
            *CATALOG_ASSETS,
            *ORDERBOOK_ASSETS,
            *FUNDING_ASSETS,
            *RETENTION_ASSETS,
        ],
        jobs=[candles_job, audit_job, analytics_job, catalog_job, orderbook_job, retention_job],
        schedules=[audit_schedule, analytics_schedule, catalog_schedule, orderbook_schedule, retention_schedule],
        sensors=[symbol_discovery_sensor, gap_sensor, raw_observation_sensor, backfill_tracking_sensor],
        resources=res.as_dict(),
        # Steps are I/O-bound on the stores; a process per step (the multiprocess default) cost
        # ~2 s of start-up each on 2 cores, more than most steps take (bench/bench_backfill.py).
        executor=in_process_executor,
    )


defs = build_defs()
