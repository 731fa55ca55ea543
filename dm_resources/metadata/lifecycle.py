"""Strategy lifecycle: transitions as events, the newest one being the strategy's state.

A transition names the state it starts from; it lands only if that is the current state, in
one transaction. Two transitions racing from the same state both compute the same next
``seq``; the unique key ``(strategy_id, seq)`` lets one through, the other is retried and then
finds the state moved on (:class:`WrongState`). A retried POST of a transition that already
landed (same from, to, who and time) answers the stored event instead of a conflict.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, insert, select

from dm_resources.metadata import service_models as m
from dm_resources.metadata.store import MetadataStore

EVENTS: Table = m.LifecycleEvent.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
CONFLICT_RETRIES = 3


class WrongState(ValueError):
    def __init__(self, current: str | None, expected: str | None) -> None:
        super().__init__(f"current state is {current!r}, not {expected!r}")
        self.current = current
        self.expected = expected


@dataclass(frozen=True)
class Transition:
    strategy_id: str
    from_state: str | None
    to_state: str
    transitioned_by: str
    reason: str | None
    service: str | None
    recorded_by: str
    metadata: Mapping[str, Any] | None
    decision_id: str | None
    transitioned_at: dt.datetime | None


def _same(event: Mapping[str, Any], t: Transition) -> bool:
    if (event["from_state"], event["to_state"], event["transitioned_by"]) != (
        t.from_state,
        t.to_state,
        t.transitioned_by,
    ):
        return False
    if t.transitioned_at is not None:
        return bool(event["transitioned_at"] == t.transitioned_at)
    return bool(event["reason"] == t.reason)


class LifecycleStore:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    @staticmethod
    def _latest(conn: Connection, strategy_id: str) -> dict[str, Any] | None:
        row = conn.execute(
            select(EVENTS).where(EVENTS.c.strategy_id == strategy_id).order_by(EVENTS.c.seq.desc()).limit(1)
        ).first()
        return dict(row._mapping) if row is not None else None

    def state(self, strategy_id: str) -> dict[str, Any] | None:
        with self.store._read() as conn:
            return self._latest(conn, strategy_id)

    def events(self, strategy_id: str, *, limit: int = 500, descending: bool = False) -> list[dict[str, Any]]:
        order = EVENTS.c.seq.desc() if descending else EVENTS.c.seq.asc()
        stmt = select(EVENTS).where(EVENTS.c.strategy_id == strategy_id).order_by(order).limit(limit)
        with self.store._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def by_decision(self, decision_id: str, *, limit: int = 500) -> list[dict[str, Any]]:
        stmt = select(EVENTS).where(EVENTS.c.decision_id == decision_id).order_by(EVENTS.c.id).limit(limit)
        with self.store._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def query(
        self, *, strategy_ids: list[str] | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[dict[str, Any]], bool]:
        stmt = select(EVENTS)
        if strategy_ids is not None:
            stmt = stmt.where(EVENTS.c.strategy_id.in_(strategy_ids))
        stmt = stmt.order_by(EVENTS.c.id).limit(limit + 1).offset(offset)
        with self.store._read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
        return rows[:limit], len(rows) > limit

    def transition(self, t: Transition) -> tuple[dict[str, Any], bool]:
        """Apply ``t`` if the strategy is in ``t.from_state``; (the event, whether it is new)."""

        def run(conn: Connection) -> tuple[dict[str, Any], bool]:
            latest = self._latest(conn, t.strategy_id)
            if latest is not None and _same(latest, t):
                return latest, False
            current = latest["to_state"] if latest is not None else None
            if current != t.from_state:
                raise WrongState(current, t.from_state)
            now = dt.datetime.now(dt.UTC)
            values = {
                "event_id": uuid.uuid4().hex,
                "strategy_id": t.strategy_id,
                "seq": (latest["seq"] if latest is not None else 0) + 1,
                "from_state": t.from_state,
                "to_state": t.to_state,
                "transitioned_by": t.transitioned_by,
                "reason": t.reason,
                "service": t.service,
                "recorded_by": t.recorded_by,
                "metadata": dict(t.metadata) if t.metadata is not None else None,
                "decision_id": t.decision_id,
                "transitioned_at": t.transitioned_at or now,
                "created_at": now,
            }
            conn.execute(insert(EVENTS).values(values))
            stored = self._latest(conn, t.strategy_id)
            assert stored is not None
            return stored, True

        return self.store._write_until_no_conflict(run, CONFLICT_RETRIES)
