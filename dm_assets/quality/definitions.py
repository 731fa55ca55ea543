"""Quality domain: audit results and health scores per date × symbol partition."""

from dagster import Definitions

from dm_assets.policy import with_domain_policy
from dm_assets.quality.assets import QUALITY_ASSETS

defs = with_domain_policy(Definitions(assets=QUALITY_ASSETS), layer="quality", kinds={"mysql", "pandas"})
