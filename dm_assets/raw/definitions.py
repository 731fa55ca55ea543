"""Raw domain: the MongoDB collections the ingest service writes, observed (not materialized)."""

from dagster import Definitions

from dm_assets.policy import with_domain_policy
from dm_assets.raw.assets import RAW_ASSET_SPECS
from dm_assets.raw.sensors import raw_observation_sensor
from dm_resources.contracts import RAW_GROUP

defs = with_domain_policy(
    Definitions(assets=RAW_ASSET_SPECS, sensors=[raw_observation_sensor]), layer=RAW_GROUP, kinds={"mongodb"}
)
