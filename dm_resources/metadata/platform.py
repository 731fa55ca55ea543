"""The trading platform's records in the metadata database: ``positions`` and ``daily_pnl``.

The API's generic contract (``/api/v1/mysql/{collection}``) and the typed routes both go
through :class:`PlatformTables`. Conditions arrive already validated and typed
(``api/contract``): this module only turns them into SQL, never a client string.

Why it looks like this:

* **Upserts are update-then-insert in one write transaction, retried on a key conflict.**
  The trade engine upserts with a *filter* (``{symbol, position_side, status: "open"}``),
  not with a primary key, so a dialect-native ``INSERT … ON CONFLICT`` cannot express it.
  Safety under concurrency comes from the unique keys (see ``models.Position``): two
  writers that both find nothing and both insert cannot both succeed; the loser's
  transaction is retried from the start and then finds and updates the winner's row. On
  MySQL the ``SELECT … FOR UPDATE`` gap locks turn the same race into a deadlock, which
  :meth:`MetadataStore._write` already retries. SQLite serialises writers (``BEGIN IMMEDIATE``).
* **``modified_count`` means "changed"**, as in MongoDB: rows whose stored values already
  equal the new ones are matched but not modified (the engine treats ``modified_count > 0``
  as a successful close).
* **Per-record outcomes for inserts**: each record runs in a savepoint of the request's one
  transaction, so one bad record never loses the good ones (the API's documented
  partial-batch semantics) while the whole request still commits once — together with its
  ``Idempotency-Key`` answer or server receipt (``idempotency.py``).
* **Every method can run inside a caller's transaction** (``conn=``): that is how a write and
  its idempotency answer commit together. Without ``conn`` each call is its own transaction.
* **A retried write never makes a second row.** A position sent without ``position_id`` gets
  one derived from the request's ``Idempotency-Key`` (and the record's place in the request),
  or, without a key, from the record's content: a repeat of the same logical write derives the
  same id and is a duplicate. An upsert inserts only a row its own filter matches: when the
  data contradicts the filter (``status: closed`` for a filter on ``status: open``), finding no
  row means the change already happened — a replayed close — and nothing is inserted.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, Table, and_, delete, func, insert, select, true, update
from sqlalchemy.exc import IntegrityError

from dm_resources.metadata import models
from dm_resources.metadata.store import MetadataStore

POSITIONS: Table = models.Position.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
DAILY_PNL: Table = models.DailyPnl.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
TABLES: dict[str, Table] = {"positions": POSITIONS, "daily_pnl": DAILY_PNL}
# Columns the API never shows nor accepts: surrogate key and the open-slot bookkeeping.
INTERNAL = frozenset({"id", "open_slot"})
# The natural key a record is identified by in responses (``upserted_id``) and duplicates.
NATURAL_KEY = {"positions": "position_id", "daily_pnl": "date"}
# NOT NULL columns this module fills when a record leaves them out (``_new_row``): not required on insert.
AUTO_FILLED: dict[str, frozenset[str]] = {
    "positions": frozenset({"position_id", "status", "created_at"}),
    "daily_pnl": frozenset({"created_at"}),
}
CONFLICT_RETRIES = 3

OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in")


@dataclass(frozen=True)
class Cond:
    """One typed condition: ``field`` (a column name) ``op`` ``value`` (already of the column's type)."""

    field: str
    op: str
    value: Any


@dataclass
class InsertOutcome:
    inserted: int = 0
    duplicates: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"index", "reason"}


@dataclass
class UpdateOutcome:
    matched: int = 0
    modified: int = 0
    upserted: int = 0
    upserted_id: Any = None


class ConflictError(ValueError):
    """A write that would break a unique key (a second open position for a symbol and side)."""


class TooManyRows(ValueError):
    """An update or delete matched more rows than its ``max_rows``: refused, nothing changed."""

    def __init__(self, matched: int, max_rows: int) -> None:
        super().__init__(
            f"the filter matches more than max_rows={max_rows} rows; nothing was changed: "
            "narrow the filter, or raise max_rows if that many rows are meant"
        )
        self.matched = matched
        self.max_rows = max_rows


@dataclass(frozen=True)
class Actor:
    """Who asks for a delete, as its audit row records it (never a secret) and the filter as it was sent."""

    name: str = "internal"
    filter: str = ""


MUTATION_AUDIT: Table = models.MutationAudit.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
MAX_AUDIT_FILTER_CHARS = 4000


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def public_columns(table: str) -> list[str]:
    return [c.name for c in TABLES[table].columns if c.name not in INTERNAL]


def _where(table: Table, conds: Sequence[Cond]) -> ColumnElement[bool]:
    parts: list[ColumnElement[bool]] = []
    for c in conds:
        col = table.c[c.field]
        if c.op == "eq":
            parts.append(col.is_(None) if c.value is None else col == c.value)
        elif c.op == "ne":
            parts.append(col.is_not(None) if c.value is None else (col != c.value) | col.is_(None))
        elif c.op == "gt":
            parts.append(col > c.value)
        elif c.op == "gte":
            parts.append(col >= c.value)
        elif c.op == "lt":
            parts.append(col < c.value)
        elif c.op == "lte":
            parts.append(col <= c.value)
        elif c.op == "in":
            parts.append(col.in_(list(c.value)))
        else:  # the API validates operators; this is a programming error
            raise ValueError(f"unsupported operator {c.op!r}")
    return and_(true(), *parts)


def _with_bookkeeping(table: str, values: dict[str, Any]) -> dict[str, Any]:
    """``open_slot`` follows ``status``: 1 while open, NULL once closed (see models.Position)."""
    out = dict(values)
    if table == "positions" and "status" in out:
        out["open_slot"] = 1 if out["status"] == "open" else None
    return out


# uuid5 namespace of derived position ids (fixed: the same request must derive the same id forever).
POSITION_ID_NAMESPACE = uuid.UUID("6f1c7a52-3d4b-5e0f-9a7c-2b8d4e6f1a30")


def derive_position_id(values: Mapping[str, Any], seed: str | None = None) -> str:
    """The id of a position sent without one: from ``seed`` (the request's key and the record's place), else content.

    Deterministic, so the retry of a logical write can never become a second row.
    """
    basis = seed if seed is not None else orjson.dumps(dict(values), default=str, option=orjson.OPT_SORT_KEYS).decode()
    return uuid.uuid5(POSITION_ID_NAMESPACE, basis).hex


def _new_row(table: str, values: Mapping[str, Any], seed: str | None = None) -> dict[str, Any]:
    row = _with_bookkeeping(table, dict(values))
    row.setdefault("created_at", utcnow())
    if table == "positions":
        if row.get("position_id") is None:
            row["position_id"] = derive_position_id(values, seed)
        row.setdefault("status", "open")
        row["open_slot"] = 1 if row["status"] == "open" else None
    return row


def _missing_required(table: str, row: Mapping[str, Any]) -> list[str]:
    required = [c.name for c in TABLES[table].columns if not c.nullable and c.name not in INTERNAL]
    return [name for name in required if row.get(name) is None]


def _differs(stored: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return any(stored.get(k) != v for k, v in values.items())


class PlatformTables:
    """Generic insert/query/update/delete over the platform tables, on a :class:`MetadataStore`."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    # -- inserts ---------------------------------------------------------------------------

    def insert(
        self,
        table: str,
        records: Sequence[Mapping[str, Any]],
        *,
        conn: Connection | None = None,
        id_seed: str | None = None,
    ) -> InsertOutcome:
        """Insert each record in a savepoint of one transaction; an existing natural key is a duplicate.

        ``id_seed`` (the request's idempotency seed) derives the ids of records sent without one.
        """
        if conn is None:
            return self.store._write(lambda c: self.insert(table, records, conn=c, id_seed=id_seed))
        tbl = TABLES[table]
        key = NATURAL_KEY[table]
        out = InsertOutcome()
        for index, record in enumerate(records):
            row = _new_row(table, record, f"{id_seed}:{index}" if id_seed is not None else None)
            missing = _missing_required(table, row)
            if missing:
                out.errors.append({"index": index, "reason": f"missing required field(s): {', '.join(missing)}"})
                continue
            if self._exists(table, key, row[key], conn):
                out.duplicates += 1
                continue
            try:
                with conn.begin_nested():
                    conn.execute(insert(tbl).values(row))
                out.inserted += 1
            except IntegrityError:
                if self._exists(table, key, row[key], conn, latest=True):  # lost a race to a concurrent insert
                    out.duplicates += 1
                else:
                    out.errors.append({"index": index, "reason": self._conflict_reason(table, row)})
        return out

    def _exists(self, table: str, key: str, value: Any, conn: Connection, *, latest: bool = False) -> bool:
        """Whether a row with this natural key exists; ``latest`` reads past this transaction's snapshot.

        After a unique-key error the competing row was committed by another transaction, which a
        REPEATABLE READ snapshot (MySQL's default) does not show: a locking read does.
        """
        tbl = TABLES[table]
        stmt = select(tbl.c.id).where(tbl.c[key] == value)
        if latest and conn.dialect.name in ("mysql", "mariadb", "postgresql"):
            stmt = stmt.with_for_update(read=True)
        return conn.execute(stmt).first() is not None

    @staticmethod
    def _conflict_reason(table: str, row: Mapping[str, Any]) -> str:
        if table == "positions":
            return (
                f"an open position for {row.get('symbol')} {row.get('position_side')} already exists "
                "(one open position per symbol and position_side)"
            )
        return f"conflicts with an existing {table} record"

    # -- reads -----------------------------------------------------------------------------

    def query(
        self,
        table: str,
        conds: Sequence[Cond],
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 100,
        offset: int = 0,
        fields: Sequence[str] | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Rows matching ``conds`` in ``sort`` order (then by insertion), one page; and whether more exist."""
        tbl = TABLES[table]
        names = list(fields) if fields else public_columns(table)
        order = [tbl.c[f].desc() if d < 0 else tbl.c[f].asc() for f, d in sort]
        order.append(tbl.c.id.asc())
        stmt = (
            select(*(tbl.c[n] for n in names))
            .where(_where(tbl, conds))
            .order_by(*order)
            .limit(limit + 1)
            .offset(offset)
        )
        with self.store._read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
        return rows[:limit], len(rows) > limit

    def count(self, table: str) -> int:
        tbl = TABLES[table]
        with self.store._read() as conn:
            return int(conn.execute(select(func.count()).select_from(tbl)).scalar() or 0)

    # -- updates ---------------------------------------------------------------------------

    def update(
        self,
        table: str,
        conds: Sequence[Cond],
        values: Mapping[str, Any],
        *,
        upsert: bool,
        conn: Connection | None = None,
        id_seed: str | None = None,
        max_rows: int | None = None,
    ) -> UpdateOutcome:
        """Set ``values`` on every row matching ``conds``; with ``upsert``, insert ``eq`` conds + values if none.

        More than ``max_rows`` matching rows is :class:`TooManyRows`, before anything changes.
        Retried from its savepoint when the insert loses a race on a unique key: the retry then
        finds the row the winner inserted and updates it, so concurrent upserts end with one row.
        """
        if conn is None:
            return self.store._write(
                lambda c: self.update(table, conds, values, upsert=upsert, conn=c, id_seed=id_seed, max_rows=max_rows)
            )
        for attempt in range(CONFLICT_RETRIES):
            try:
                with conn.begin_nested():
                    return self._update_once(conn, table, conds, values, upsert, id_seed, max_rows)
            except IntegrityError as exc:
                if attempt == CONFLICT_RETRIES - 1:
                    raise ConflictError(self._conflict_reason(table, {**values})) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _update_once(
        self,
        conn: Connection,
        table: str,
        conds: Sequence[Cond],
        values: Mapping[str, Any],
        upsert: bool,
        id_seed: str | None,
        max_rows: int | None,
    ) -> UpdateOutcome:
        tbl = TABLES[table]
        new_values = _with_bookkeeping(table, dict(values))
        stmt = select(tbl).where(_where(tbl, conds)).order_by(tbl.c.id)
        if max_rows is not None:
            stmt = stmt.limit(max_rows + 1)
        if conn.dialect.name in ("mysql", "mariadb", "postgresql"):
            stmt = stmt.with_for_update()
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
        if max_rows is not None and len(rows) > max_rows:
            raise TooManyRows(len(rows), max_rows)
        if rows:
            changed = [r["id"] for r in rows if _differs(r, new_values)]
            if changed:
                conn.execute(update(tbl).where(tbl.c.id.in_(changed)).values(new_values))
            return UpdateOutcome(matched=len(rows), modified=len(changed))
        if not upsert:
            return UpdateOutcome()
        seed = {c.field: c.value for c in conds if c.op == "eq"}
        contradicted = [f for f, v in seed.items() if f in values and values[f] != v]
        if contradicted:
            # The row this upsert would insert does not match its own filter: nothing matching means
            # the change was made already (a replayed close), never a reason for a new row.
            return UpdateOutcome()
        row = _new_row(table, {**seed, **values}, id_seed)
        missing = _missing_required(table, row)
        if missing:
            raise ValueError(f"upsert would insert a {table} row without {', '.join(missing)}")
        conn.execute(insert(tbl).values(row))
        key = NATURAL_KEY[table]
        return UpdateOutcome(upserted=1, upserted_id=row.get(key))

    def delete(
        self,
        table: str,
        conds: Sequence[Cond],
        *,
        conn: Connection | None = None,
        max_rows: int | None = None,
        actor: Actor | None = None,
    ) -> int:
        """Delete the rows matching ``conds`` (at most ``max_rows``, else :class:`TooManyRows`), and audit it.

        The audit row (who, dataset, filter, count) is written in the same transaction: a delete
        that commits is always recorded, one that rolls back never is.
        """
        if conn is None:
            return self.store._write(lambda c: self.delete(table, conds, conn=c, max_rows=max_rows, actor=actor))
        tbl = TABLES[table]
        stmt = select(tbl.c.id).where(_where(tbl, conds)).order_by(tbl.c.id)
        if max_rows is not None:
            stmt = stmt.limit(max_rows + 1)
        if conn.dialect.name in ("mysql", "mariadb", "postgresql"):
            stmt = stmt.with_for_update()
        ids = [r.id for r in conn.execute(stmt)]
        if max_rows is not None and len(ids) > max_rows:
            raise TooManyRows(len(ids), max_rows)
        count = int(conn.execute(delete(tbl).where(tbl.c.id.in_(ids))).rowcount) if ids else 0
        who = actor or Actor()
        shown = who.filter or orjson.dumps([[c.field, c.op, c.value] for c in conds], default=str).decode()
        conn.execute(
            insert(MUTATION_AUDIT).values(
                created_at=utcnow(),
                actor=who.name[:128],
                operation="delete",
                dataset=table,
                filter=shown[:MAX_AUDIT_FILTER_CHARS],
                count=count,
            )
        )
        return count
