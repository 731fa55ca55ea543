"""Quality domain: audit results and health scores per date × symbol partition."""

from dagster import Definitions

from dm_assets.policy import with_domain_policy
from dm_assets.quality.assets import QUALITY_ASSETS
from dm_resources.contracts import QUALITY_GROUP

defs = with_domain_policy(Definitions(assets=QUALITY_ASSETS), layer=QUALITY_GROUP, kinds={"mysql", "pandas"})
