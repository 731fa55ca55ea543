"""Catalog domain: the dataset catalog and the lineage of the data domains it describes."""

from collections.abc import Sequence

from dagster import AssetsDefinition, AssetSpec, Definitions

from dm_assets.catalog.assets import build_lineage_asset, datasets
from dm_assets.catalog.jobs import catalog_job
from dm_assets.catalog.schedules import catalog_schedule
from dm_assets.policy import with_domain_policy
from dm_resources.contracts import CATALOG_GROUP


def asset_specs(defs: Definitions) -> Sequence[AssetSpec]:
    """The specs of every asset in ``defs``, read from the definitions as written.

    Not ``defs.resolve_all_asset_specs()``: that builds a repository, which refuses domain
    definitions merged before their resources are bound.
    """
    out: list[AssetSpec] = []
    for item in defs.assets or []:
        if isinstance(item, AssetSpec):
            out.append(item)
        elif isinstance(item, AssetsDefinition):
            out.extend(item.specs)
    return out


def catalog_defs(described: Definitions) -> Definitions:
    """The catalog over ``described`` (the merged data domains): its lineage is their asset graph."""
    lineage = build_lineage_asset(lambda: asset_specs(described))
    return with_domain_policy(
        Definitions(assets=[datasets, lineage], jobs=[catalog_job], schedules=[catalog_schedule]),
        layer=CATALOG_GROUP,
        kinds={"mysql"},
    )
