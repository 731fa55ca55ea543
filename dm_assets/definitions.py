"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here.

One ``Definitions`` per domain (``dm_assets/<domain>/definitions.py``), merged here with the
resources and the executor. The catalog is built over the merged data domains, so its lineage
asset records exactly this code location's graph.

Resources reference the ``DM_*`` environment (``EnvVar``) or read the settings at run time,
so the same definitions run on the embedded stack (SecantusDB, SQLite) and in production
(MongoDB, MySQL, dagster-postgres) without code changes, and the UI shows no credentials.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from dm_assets.analytics.definitions import defs as analytics_defs
from dm_assets.backfills.definitions import defs as backfills_defs
from dm_assets.candles.definitions import defs as candles_defs
from dm_assets.catalog.definitions import catalog_defs
from dm_assets.funding.definitions import defs as funding_defs
from dm_assets.orderbook.definitions import defs as orderbook_defs
from dm_assets.quality.definitions import defs as quality_defs
from dm_assets.raw.definitions import defs as raw_defs
from dm_assets.retention.definitions import defs as retention_defs
from dm_resources.resources import ResourceSet

DATA_DOMAINS = Definitions.merge(
    raw_defs,
    candles_defs,
    quality_defs,
    analytics_defs,
    orderbook_defs,
    funding_defs,
    retention_defs,
    backfills_defs,
)


def build_defs(resources: ResourceSet | None = None) -> Definitions:
    """Definitions with the given resources; tests pass their own servers' URLs."""
    res = resources or ResourceSet()
    return Definitions.merge(
        DATA_DOMAINS,
        catalog_defs(DATA_DOMAINS),
        Definitions(
            resources=res.as_dict(),
            # Steps are I/O-bound on the stores; a process per step (the multiprocess default) cost
            # ~2 s of start-up each on 2 cores, more than most steps take (bench/bench_backfill.py).
            executor=in_process_executor,
        ),
    )


defs = build_defs()
