"""What ``/api/v1/config/*`` and the ``strategy_configs_*`` collections do, as plain functions over the store.

Shapes follow the TA bot's and the realtime strategies' clients (docs/PLATFORM_CONTRACT.md,
TA-05…TA-14, RS-02…RS-10). A strategy read answers the *effective* parameters (global, then
the symbol override, then the symbol+side override on top) and, in ``overrides``, the values
stored for the scope asked about.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from api.contract.config import (
    APP_DEFAULTS,
    APPLICATION,
    Scope,
    against_declared,
    check_app_config,
    check_parameters,
    raise_problems,
)
from api.params import ParamError
from dm_resources.metadata.store import MetadataStore
from dm_resources.metadata.strategy_config import (
    Change,
    ConfigStore,
    NotRollbackable,
    ScopeKey,
    VersionNotFound,
)


def key(scope: Scope) -> ScopeKey:
    return ScopeKey(scope.kind, scope.strategy_id, scope.symbol, scope.side)


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _checker(parameters: Mapping[str, Any], declare: bool) -> Any:
    def check(declared: Mapping[str, str]) -> Mapping[str, str]:
        problems, new = against_declared(parameters, declared, declare=declare)
        raise_problems(problems)
        return new

    return check


# --- application -------------------------------------------------------------------------------


def app_view(row: Mapping[str, Any] | None) -> dict[str, Any]:
    if row is None:
        return {**APP_DEFAULTS, "version": 0, "source": "default", "created_at": None, "updated_at": None}
    return {
        **APP_DEFAULTS,
        **row["parameters"],
        "version": row["version"],
        "source": "database",
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "updated_by": row["updated_by"],
    }


def get_app(meta: MetadataStore) -> dict[str, Any]:
    return app_view(ConfigStore(meta).current(key(APPLICATION)))


def set_app(
    meta: MetadataStore,
    values: Mapping[str, Any],
    *,
    changed_by: str,
    reason: str | None,
    service: str,
    validate_only: bool,
) -> dict[str, Any]:
    params = check_app_config(values)
    store = ConfigStore(meta)
    if validate_only:
        current = store.current(key(APPLICATION))
        return {**app_view(current), **params, "validated": True, "saved": False}
    change = store.put(key(APPLICATION), params, changed_by=changed_by, service=service, reason=reason)
    return {**app_view(change.current), "saved": change.changed}


# --- strategies --------------------------------------------------------------------------------


def _chain(scope: Scope) -> list[Scope]:
    """The scopes whose values make up ``scope``'s effective values, broadest first."""
    chain = [Scope("strategy", scope.strategy_id)]
    if scope.symbol:
        chain.append(Scope("strategy", scope.strategy_id, scope.symbol))
    if scope.side:
        chain.append(scope)
    return chain


def strategy_view(meta: MetadataStore, scope: Scope) -> dict[str, Any]:
    store = ConfigStore(meta)
    rows = {(r["symbol"], r["side"]): r for r in store.currents(scope.strategy_id)}
    effective: dict[str, Any] = {}
    newest: Mapping[str, Any] | None = None
    for s in _chain(scope):
        row = rows.get((s.symbol, s.side))
        if row is not None:
            effective.update(row["parameters"])
            newest = row
    own = rows.get((scope.symbol, scope.side))
    source = "none" if newest is None else "override" if newest["symbol"] or newest["side"] else "global"
    return {
        **scope.public(),
        "parameters": effective,
        "overrides": own["parameters"] if own is not None and scope.is_override else None,
        "version": own["version"] if own is not None else 0,
        "source": source,
        "is_override": scope.is_override,
        "created_at": iso(own["created_at"]) if own is not None else None,
        "updated_at": iso(own["updated_at"]) if own is not None else None,
        "updated_by": own["updated_by"] if own is not None else None,
    }


def set_strategy(
    meta: MetadataStore,
    scope: Scope,
    parameters: Any,
    *,
    changed_by: str,
    reason: str | None,
    service: str,
    validate_only: bool = False,
    declare: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Change | None]:
    params = check_parameters(parameters)
    store = ConfigStore(meta)
    if validate_only:
        problems, _ = against_declared(params, store.declared(scope.strategy_id), declare=declare)
        raise_problems(problems)
        return {**strategy_view(meta, scope), "validated": True, "saved": False}, None
    change = store.put(
        key(scope),
        params,
        changed_by=changed_by,
        service=service,
        reason=reason,
        metadata=metadata,
        check=_checker(params, declare),
    )
    view = strategy_view(meta, scope)
    return {**view, "saved": change.changed, "declared": list(change.declared)}, change


def delete_strategy(
    meta: MetadataStore, scope: Scope, *, changed_by: str, reason: str | None, service: str
) -> dict[str, Any]:
    change = ConfigStore(meta).delete(key(scope), changed_by=changed_by, service=service, reason=reason)
    if not change.changed and change.action != "DELETE":
        raise ParamError("strategy_id", f"no configuration for {_describe(scope)}", status=404, where="path")
    return {**scope.public(), "deleted": True, "already_deleted": not change.changed, "version": change.version}


def rollback(
    meta: MetadataStore, scope: Scope, target_version: Any, *, changed_by: str, reason: str | None, service: str
) -> dict[str, Any]:
    if target_version is not None and (
        isinstance(target_version, bool) or not isinstance(target_version, int) or not 0 < target_version < 2**31
    ):
        raise ParamError("target_version", "must be a positive integer version number", where="body")
    store = ConfigStore(meta)
    try:  # restored values were checked when first stored, and declared types never change
        change = store.rollback(key(scope), target_version, changed_by=changed_by, service=service, reason=reason)
    except VersionNotFound as exc:
        raise ParamError("target_version", f"{_describe(scope)}: {exc}", status=404, where="body") from None
    except NotRollbackable as exc:
        raise ParamError("target_version", str(exc), status=409, where="body") from None
    view = app_view(change.current) if scope.kind == "application" else strategy_view(meta, scope)
    return {**view, "rolled_back": change.changed, "rollback_to": _rollback_to(store, scope, change)}


def _rollback_to(store: ConfigStore, scope: Scope, change: Change) -> int | None:
    row = store.version(key(scope), change.version)
    return row["rollback_to"] if row is not None else None


def _describe(scope: Scope) -> str:
    if scope.kind == "application":
        return "the application configuration"
    out = f"strategy {scope.strategy_id!r}"
    if scope.symbol:
        out += f" symbol {scope.symbol}"
    if scope.side:
        out += f" side {scope.side}"
    return out


def audit_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "version": row["version"],
        "action": row["action"],
        "strategy_id": row["strategy_id"] if row["kind"] == "strategy" else None,
        "symbol": row["symbol"] or None,
        "side": row["side"] or None,
        "before": row["previous"],
        "after": row["parameters"],
        "changed_by": row["changed_by"],
        "service": row["service"],
        "reason": row["reason"],
        "rollback_to": row["rollback_to"],
        "changed_at": iso(row["changed_at"]),
    }


def audit(meta: MetadataStore, scope: Scope, *, limit: int, whole_strategy: bool = False) -> list[dict[str, Any]]:
    store = ConfigStore(meta)
    if whole_strategy:
        rows = store.versions(strategy_id=scope.strategy_id, symbol=scope.symbol or None, limit=limit)
    else:
        rows = store.versions(key(scope), limit=limit)
    return [audit_view(r) for r in rows]


def list_strategies(meta: MetadataStore) -> dict[str, Any]:
    ids = sorted(ConfigStore(meta).strategy_ids())
    return {"strategy_ids": ids, "count": len(ids)}


def list_symbols(meta: MetadataStore, strategy_id: str) -> dict[str, Any]:
    rows = [r for r in ConfigStore(meta).currents(strategy_id) if r["symbol"]]
    return {
        "strategy_id": strategy_id,
        "symbols": sorted({r["symbol"] for r in rows}),
        "overrides": [
            {"symbol": r["symbol"], "side": r["side"] or None, "version": r["version"], "parameters": r["parameters"]}
            for r in rows
        ],
    }
