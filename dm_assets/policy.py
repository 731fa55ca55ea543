"""Shared policy of a domain's assets, applied once over its specs in the domain's ``definitions.py``.

Every asset of a domain carries the same ``dm/layer`` tag and the same kinds (the stores it
writes, the libraries it computes with). Writing them on each decorator repeats the fact and
lets one asset drift; mapping over the resolved specs (dagster-open-platform's
``permissive_map_resolved_asset_specs``) states it once per domain and reaches every spec,
including those of a ``multi_asset`` and the ``AssetSpec``s of external assets.
"""

from __future__ import annotations

from collections.abc import Iterable

from dagster import AssetSpec, Definitions

LAYER_TAG = "dm/layer"


def with_domain_policy(defs: Definitions, *, layer: str, kinds: Iterable[str]) -> Definitions:
    """``defs`` with every asset spec tagged ``dm/layer: layer`` and given ``kinds`` (added to its own)."""
    shared = set(kinds)

    def apply(spec: AssetSpec) -> AssetSpec:
        return spec.merge_attributes(tags={LAYER_TAG: layer}, kinds=shared)

    return defs.permissive_map_resolved_asset_specs(func=apply, selection=None)
