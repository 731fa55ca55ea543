"""The retention job."""

from __future__ import annotations

from dagster import define_asset_job

from dm_assets.retention.assets import RETENTION_KEY

retention_job = define_asset_job(
    "retention_job", selection=[RETENTION_KEY], description="Daily retention of the high-volume collections."
)
