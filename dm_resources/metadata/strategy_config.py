"""Versioned, audited configuration (the application's and each strategy's), on the metadata store.

Every change is one transaction that writes the new current row and appends one row to
``strategy_config_versions`` (who, why, before, after): the audit trail cannot miss a change
nor record one that did not happen. A rollback is itself such a change (action ROLLBACK,
``rollback_to``). A change that leaves the values as they are writes nothing (a retried POST
lands once).

Writers of an existing scope take its current row ``FOR UPDATE`` first, so they queue rather
than collide. Two writers creating a scope both compute version 1; the unique key on the
version row lets one of them through and the other's transaction is retried from the start,
where it sees the winner's version (:data:`CONFLICT_RETRIES`).

The caller passes ``check``: given the strategy's declared parameters (read inside the
transaction) it returns the names to declare or raises; validation rules live in
``api/contract/config.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, func, insert, select, update

from dm_resources.metadata import service_models as m
from dm_resources.metadata.store import MetadataStore

CONFIGS: Table = m.StrategyConfig.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
VERSIONS: Table = m.StrategyConfigVersion.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
PARAMS: Table = m.StrategyParameter.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
CONFLICT_RETRIES = 8

Check = Callable[[Mapping[str, str]], Mapping[str, str]]


@dataclass(frozen=True)
class ScopeKey:
    kind: str
    strategy_id: str
    symbol: str = ""
    side: str = ""

    def where(self, table: Table) -> Any:
        return and_(
            table.c.kind == self.kind,
            table.c.strategy_id == self.strategy_id,
            table.c.symbol == self.symbol,
            table.c.side == self.side,
        )

    def values(self) -> dict[str, str]:
        return {"kind": self.kind, "strategy_id": self.strategy_id, "symbol": self.symbol, "side": self.side}


@dataclass
class Change:
    """What a write did: the current row afterwards (None once deleted) and whether a version was added."""

    current: dict[str, Any] | None
    version: int
    changed: bool
    action: str | None = None
    declared: tuple[str, ...] = ()


class VersionNotFound(LookupError):
    pass


class NotRollbackable(ValueError):
    pass


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ConfigStore:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    # -- reads -----------------------------------------------------------------------------

    def current(self, key: ScopeKey) -> dict[str, Any] | None:
        with self.store._read() as conn:
            row = conn.execute(select(CONFIGS).where(key.where(CONFIGS))).first()
        return dict(row._mapping) if row is not None else None

    def currents(self, strategy_id: str) -> list[dict[str, Any]]:
        """Every current row of one strategy (global and overrides)."""
        t = CONFIGS
        stmt = select(t).where(t.c.kind == "strategy", t.c.strategy_id == strategy_id).order_by(t.c.symbol, t.c.side)
        with self.store._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def query(
        self,
        *,
        strategy_ids: list[str] | None = None,
        symbols: list[str] | None = None,
        overrides: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Current strategy rows by strategy id / symbol; ``overrides`` False: global rows only, True: symbol rows."""
        t = CONFIGS
        stmt = select(t).where(t.c.kind == "strategy")
        if strategy_ids is not None:
            stmt = stmt.where(t.c.strategy_id.in_(strategy_ids))
        if symbols is not None:
            stmt = stmt.where(t.c.symbol.in_(symbols))
        if overrides is False:
            stmt = stmt.where(t.c.symbol == "")
        elif overrides is True:
            stmt = stmt.where(t.c.symbol != "")
        stmt = stmt.order_by(t.c.strategy_id, t.c.symbol, t.c.side, t.c.id).limit(limit + 1).offset(offset)
        with self.store._read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
        return rows[:limit], len(rows) > limit

    def strategy_ids(self) -> list[str]:
        t = CONFIGS
        with self.store._read() as conn:
            return [r[0] for r in conn.execute(select(t.c.strategy_id).where(t.c.kind == "strategy").distinct())]

    def declared(self, strategy_id: str) -> dict[str, str]:
        with self.store._read() as conn:
            return self._declared(conn, strategy_id)

    @staticmethod
    def _declared(conn: Connection, strategy_id: str) -> dict[str, str]:
        rows = conn.execute(select(PARAMS.c.name, PARAMS.c.type).where(PARAMS.c.strategy_id == strategy_id))
        return {name: kind for name, kind in rows}

    def versions(
        self,
        key: ScopeKey | None = None,
        *,
        strategy_id: str | None = None,
        symbol: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Audit rows, newest first: of one scope, or of a strategy (optionally one symbol) across its scopes."""
        t = VERSIONS
        stmt = select(t).order_by(t.c.changed_at.desc(), t.c.id.desc()).limit(limit)
        if key is not None:
            stmt = stmt.where(key.where(t))
        else:
            if strategy_id is not None:
                stmt = stmt.where(t.c.kind == "strategy", t.c.strategy_id == strategy_id)
            if symbol is not None:
                stmt = stmt.where(t.c.symbol == symbol)
        with self.store._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def version(self, key: ScopeKey, number: int) -> dict[str, Any] | None:
        with self.store._read() as conn:
            row = conn.execute(select(VERSIONS).where(key.where(VERSIONS), VERSIONS.c.version == number)).first()
        return dict(row._mapping) if row is not None else None

    # -- writes ----------------------------------------------------------------------------

    def put(
        self,
        key: ScopeKey,
        parameters: Mapping[str, Any],
        *,
        changed_by: str,
        service: str,
        reason: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        check: Check | None = None,
        action: str | None = None,
        rollback_to: int | None = None,
    ) -> Change:
        """Store ``parameters`` as the scope's values (a new version), unless they already are."""
        params = dict(parameters)

        def run(conn: Connection) -> Change:
            now = utcnow()
            row = conn.execute(select(CONFIGS).where(key.where(CONFIGS)).with_for_update()).first()
            current = dict(row._mapping) if row is not None else None
            new_names: Mapping[str, str] = {}
            if check is not None and key.kind == "strategy":
                new_names = check(self._declared(conn, key.strategy_id))
            if current is not None and current["parameters"] == params and action != "ROLLBACK":
                return Change(current, current["version"], changed=False)
            last = conn.execute(select(func.max(VERSIONS.c.version)).where(key.where(VERSIONS))).scalar()
            version = int(last or 0) + 1
            verb = action or ("UPDATE" if current is not None else "CREATE")
            for name, kind in new_names.items():
                conn.execute(
                    insert(PARAMS).values(
                        strategy_id=key.strategy_id, name=name, type=kind, declared_at=now, declared_by=changed_by
                    )
                )
            note = reason
            if new_names and current is not None:
                declared = f"declared {', '.join(sorted(new_names))}"
                note = f"{reason}; {declared}" if reason else declared
            conn.execute(
                insert(VERSIONS).values(
                    **key.values(),
                    version=version,
                    action=verb,
                    parameters=params,
                    previous=current["parameters"] if current is not None else None,
                    changed_by=changed_by,
                    service=service,
                    reason=note,
                    rollback_to=rollback_to,
                    changed_at=now,
                )
            )
            values = {
                "parameters": params,
                "version": version,
                "updated_at": now,
                "updated_by": changed_by,
                "service": service,
                "metadata": dict(metadata) if metadata is not None else (current or {}).get("metadata"),
            }
            if current is None:
                conn.execute(insert(CONFIGS).values(**key.values(), created_at=now, **values))
            else:
                conn.execute(update(CONFIGS).where(CONFIGS.c.id == current["id"]).values(**values))
            after = conn.execute(select(CONFIGS).where(key.where(CONFIGS))).first()
            assert after is not None
            return Change(dict(after._mapping), version, True, verb, tuple(sorted(new_names)))

        return self.store._write_until_no_conflict(run, CONFLICT_RETRIES)

    def delete(self, key: ScopeKey, *, changed_by: str, service: str, reason: str | None = None) -> Change:
        """Remove the scope's values (a DELETE version); deleting what is already gone changes nothing."""

        def run(conn: Connection) -> Change:
            row = conn.execute(select(CONFIGS).where(key.where(CONFIGS)).with_for_update()).first()
            if row is None:
                last = conn.execute(
                    select(VERSIONS.c.version, VERSIONS.c.action)
                    .where(key.where(VERSIONS))
                    .order_by(VERSIONS.c.version.desc())
                    .limit(1)
                ).first()
                return Change(None, int(last[0]) if last else 0, changed=False, action=last[1] if last else None)
            current = dict(row._mapping)
            version = int(conn.execute(select(func.max(VERSIONS.c.version)).where(key.where(VERSIONS))).scalar() or 0)
            conn.execute(
                insert(VERSIONS).values(
                    **key.values(),
                    version=version + 1,
                    action="DELETE",
                    parameters=None,
                    previous=current["parameters"],
                    changed_by=changed_by,
                    service=service,
                    reason=reason,
                    rollback_to=None,
                    changed_at=utcnow(),
                )
            )
            conn.execute(delete(CONFIGS).where(CONFIGS.c.id == current["id"]))
            return Change(None, version + 1, True, "DELETE")

        return self.store._write_until_no_conflict(run, CONFLICT_RETRIES)

    def rollback(
        self,
        key: ScopeKey,
        target_version: int | None,
        *,
        changed_by: str,
        service: str,
        reason: str | None = None,
        check: Check | None = None,
    ) -> Change:
        """Make version ``target_version`` (default: the one before the current) current again, as a new version.

        A retry of a rollback that already happened changes nothing: the values are already
        the target's and the newest version is that rollback.
        """
        with self.store._read() as conn:
            rows = [
                dict(r._mapping)
                for r in conn.execute(select(VERSIONS).where(key.where(VERSIONS)).order_by(VERSIONS.c.version.desc()))
            ]
        if not rows:
            raise VersionNotFound("this configuration has no versions yet")
        if target_version is None:
            candidates = [r for r in rows[1:] if r["parameters"] is not None]
            if not candidates:
                raise VersionNotFound("there is no earlier version to roll back to")
            target = candidates[0]
        else:
            found = [r for r in rows if r["version"] == target_version]
            if not found:
                known = ", ".join(str(r["version"]) for r in sorted(rows, key=lambda r: r["version"]))
                raise VersionNotFound(f"version {target_version} does not exist; versions: {known}")
            target = found[0]
        if target["parameters"] is None:
            raise NotRollbackable(f"version {target['version']} is a deletion: there are no values to restore")
        newest = rows[0]
        if (
            newest["action"] == "ROLLBACK"
            and newest["rollback_to"] == target["version"]
            and newest["parameters"] == target["parameters"]
        ):
            return Change(self.current(key), newest["version"], changed=False, action="ROLLBACK")
        note = reason or f"rollback to version {target['version']}"
        return self.put(
            key,
            target["parameters"],
            changed_by=changed_by,
            service=service,
            reason=note,
            check=check,
            action="ROLLBACK",
            rollback_to=int(target["version"]),
        )
