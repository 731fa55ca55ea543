"""Quality domain: audit results and health scores per date × symbol partition."""

from dagster import Definitions

from dm_assets.quality.assets import QUALITY_ASSETS

defs = Definitions(assets=QUALITY_ASSETS)
