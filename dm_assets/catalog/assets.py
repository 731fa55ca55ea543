"""Catalog assets: the dataset catalog and the lineage graph, both in the metadata store (MySQL).

``catalog/datasets`` depends on every data asset (it describes them all);
``catalog/lineage`` depends on none: it is a function of the code (the asset graph), not
of any data, and is refreshed with the catalog so the stored graph follows deployments.
"""

from collections.abc import Callable, Sequence

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from dm_assets.analytics.assets import ANALYTICS_KEYS
from dm_assets.catalog import build
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME
from dm_resources.contracts import (
    CANDLE_ASSET_PATHS,
    CATALOG_DATASETS_PATH,
    CATALOG_GROUP,
    CATALOG_LINEAGE_PATH,
    HEALTH_SCORES_PATH,
    ORDERBOOK_SNAPSHOTS_PATH,
    raw_asset_path,
)
from dm_resources.mongo import RAW_COLLECTIONS
from dm_resources.resources import MetadataResource, MongoResource
from dm_resources.settings import get_settings

CATALOG_DATASETS_KEY = AssetKey(CATALOG_DATASETS_PATH)


class CatalogConfig(Config):
    """How thorough a refresh is; the schedule asks for ``discover_all`` once a day."""

    discover_all: bool = Field(
        default=False,
        description="Look for symbols in every collection (a scan each), not only the symbol partitions, "
        "DM_SYMBOLS and the symbols already cataloged.",
    )
    full_recount: bool = Field(
        default=False,
        description="Recount every dataset from scratch (scans) instead of adding the documents since the last "
        "refresh; each dataset is recounted once a day anyway.",
    )


@asset(
    key=CATALOG_DATASETS_KEY,
    deps=[
        *(AssetKey(raw_asset_path(n)) for n in RAW_COLLECTIONS),
        *(AssetKey(p) for p in CANDLE_ASSET_PATHS),
        *ANALYTICS_KEYS,
        AssetKey(HEALTH_SCORES_PATH),
        AssetKey(ORDERBOOK_SNAPSHOTS_PATH),
    ],
    group_name=CATALOG_GROUP,
    description=(
        "Discovers every dataset (kind × symbol × interval) in MongoDB and records its description, schema "
        "(sampled field types with declared meanings), row count, first and last time, freshness and latest "
        "health score in the metadata store's `datasets` table. Counts and times are carried forward and extended "
        "by the documents since the last refresh (bounded reads), with a full recount of each dataset once a day; "
        "entries whose data is gone stay with 0 rows."
    ),
)
def datasets(
    context: AssetExecutionContext, config: CatalogConfig, mongo: MongoResource, metadata: MetadataResource
) -> MaterializeResult:
    symbols = {*context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME), *get_settings().symbols}
    refresh = build.refresh_catalog(
        mongo.get_store(),
        metadata.get_store(),
        symbols=symbols,
        discover_all=config.discover_all,
        full=config.full_recount,
    )
    found = refresh.datasets
    stale = [d for d in found if d.freshness_seconds is not None and d.freshness_seconds > 600]
    return MaterializeResult(
        metadata={
            "datasets": len(found),
            "by_kind": MetadataValue.json(build.by_kind(found)),
            "emptied": len(refresh.emptied),
            "older_than_10_min": len(stale),
            "catalog": MetadataValue.md(build.summary_markdown(found)),
        }
    )


def build_lineage_asset(described: Callable[[], Sequence[AssetSpec]]) -> AssetsDefinition:
    """The lineage asset over the specs ``described()`` returns: the whole code location's.

    The graph is handed in by whoever composes the code location (``dm_assets.definitions``)
    rather than read from the run: an in-process run has no repository and a subset job's own
    graph is pruned, while the composed specs are always the complete graph.
    """

    @asset(
        key=AssetKey(CATALOG_LINEAGE_PATH),
        group_name=CATALOG_GROUP,
        description=(
            "Replaces `lineage_records` in the metadata store with every upstream → downstream edge of this code "
            "location's asset graph, each with the transformation in words (the downstream asset's first sentence)."
        ),
    )
    def lineage(metadata: MetadataResource) -> MaterializeResult:
        edges = build.lineage_edges([*described(), *datasets.specs])
        stored = metadata.get_store().replace_lineage(edges)
        nodes = {e.upstream for e in edges} | {e.downstream for e in edges}
        return MaterializeResult(
            metadata={
                "edges": stored,
                "nodes": len(nodes),
                "graph": MetadataValue.md(
                    "\n".join(f"- `{e.upstream}` → `{e.downstream}`" for e in edges) or "no edges"
                ),
            }
        )

    return lineage
