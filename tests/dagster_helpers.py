"""Reading a Dagster in-process result by asset key (several assets share one step: the candles multi-asset)."""

from __future__ import annotations

from dagster import AssetKey, AssetMaterialization, ExecuteInProcessResult


def materializations(result: ExecuteInProcessResult, path: str) -> list[AssetMaterialization]:
    """Materializations of the asset ``path`` (``candles/candles_1m``) in the run, in event order."""
    key = AssetKey(path.split("/"))
    out = []
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        if mat.asset_key == key:
            out.append(mat)
    return out


def materialized(result: ExecuteInProcessResult, path: str) -> bool:
    return bool(materializations(result, path))
