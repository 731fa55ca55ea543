"""Funding domain: settled funding-rate history from REST, partitioned like the candles."""

from dagster import Definitions

from dm_assets.funding.assets import FUNDING_ASSETS
from dm_assets.policy import with_domain_policy
from dm_resources.contracts import FUNDING_GROUP

defs = with_domain_policy(Definitions(assets=FUNDING_ASSETS), layer=FUNDING_GROUP, kinds={"mongodb"})
