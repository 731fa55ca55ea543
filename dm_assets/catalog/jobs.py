"""The catalog job: the dataset catalog and the lineage records, refreshed together."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from dm_resources.contracts import CATALOG_GROUP

catalog_job = define_asset_job(
    "catalog_job",
    selection=AssetSelection.groups(CATALOG_GROUP),
    description="Refreshes the dataset catalog and the lineage records in the metadata store.",
    tags={"dm/job": "catalog"},
)
