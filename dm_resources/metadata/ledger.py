"""The ledger: the exchange's own numbers beside ours, their tie-out, and hash-chained corrections.

* **Exchange days are revisions.** The trade engine publishes a day's income from the exchange
  several times (provisional, then final); a payload whose economic content (rows, row count,
  last income time, finality) is unchanged is the same revision (a retry stores nothing), a
  changed one is the next revision. Reads use the newest revision of each day.
* **Adjustments are insert-only and hash-chained**: each row's hash covers the previous row's
  hash and its own canonical JSON, and ``prev_hash`` is unique, so the chain can neither fork
  under concurrent writers nor be edited unnoticed (:func:`verify_chain`).
* **A supersede is one transaction**: the position row is read under lock and compared with
  ``expected_before``; only if every field still holds does it become ``superseded`` and the
  ``apply`` adjustment join the chain. A retry of a supersede that already happened answers the
  stored adjustment.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select, update

from dm_resources.metadata import service_models as m
from dm_resources.metadata.platform import DAILY_PNL, POSITIONS
from dm_resources.metadata.store import MetadataStore

ADJUSTMENTS: Table = m.LedgerAdjustment.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
DAYS: Table = m.ExchangeDay.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
SNAPSHOTS: Table = m.ExchangePositions.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
CONFLICT_RETRIES = 4
INCOME_COLUMNS = {"REALIZED_PNL": "realized_pnl", "COMMISSION": "commission", "FUNDING_FEE": "funding_fee"}
MONEY_COLUMNS = frozenset(
    {
        "pnl",
        "pnl_pct",
        "pnl_after_fees",
        "commission_total",
        "final_commission",
        "entry_price",
        "exit_price",
        "quantity",
    }
)
SUPERSEDE_MUTABLE = frozenset({"status", "close_reason", "pnl_unknown"})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def canonical(value: Any) -> str:
    """JSON with sorted keys, no spaces, decimals as plain strings and times as UTC ISO-8601."""

    def norm(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        if isinstance(v, Decimal):
            return format(v.normalize(), "f") if v == v.to_integral_value() else format(v, "f").rstrip("0")
        if isinstance(v, dt.datetime):
            aware = v.replace(tzinfo=dt.UTC) if v.tzinfo is None else v.astimezone(dt.UTC)
            return aware.isoformat().replace("+00:00", "Z")
        if isinstance(v, dt.date):
            return v.isoformat()
        return v

    return json.dumps(norm(value), sort_keys=True, separators=(",", ":"))


def row_hash(prev_hash: str, payload: Mapping[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(payload)).encode()).hexdigest()


HASHED = (
    "adjustment_id",
    "applied_at",
    "applied_by",
    "approved_by",
    "target_table",
    "target_key",
    "before",
    "after",
    "reason_code",
    "evidence_ref",
    "run_mode",
    "dry_run_adjustment_id",
    "prev_hash",
)


def verify_chain(rows: list[Mapping[str, Any]]) -> bool:
    """Whether ``rows`` (in chain order, from the first) link up and each hash matches its content."""
    prev = ""
    for row in rows:
        if row["prev_hash"] != prev or row["row_hash"] != row_hash(prev, {k: row[k] for k in HASHED}):
            return False
        prev = row["row_hash"]
    return True


class Drift(ValueError):
    """The row no longer equals ``expected_before`` (``field`` says where)."""

    def __init__(self, field: str, expected: Any, found: Any) -> None:
        super().__init__(f"{field}: expected {expected!r}, found {found!r}")
        self.field = field


class NotFound(LookupError):
    pass


class AdjustmentConflict(ValueError):
    pass


@dataclass(frozen=True)
class Supersede:
    position_id: str
    expected_before: Mapping[str, Any]  # typed values per column
    reason_code: str
    evidence_ref: str
    applied_by: str
    approved_by: str
    dry_run_adjustment_id: str
    service: str


class LedgerStore:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    # -- exchange days --------------------------------------------------------------------

    def put_day(self, payload: Mapping[str, Any], service: str) -> dict[str, Any]:
        day: dt.date = payload["day"]
        economic = {k: payload[k] for k in ("rows", "row_count", "last_income_time_ms", "is_final")}
        digest = hashlib.sha256(canonical(economic).encode()).hexdigest()
        totals = {name: Decimal(0) for name in ("realized_pnl", "commission", "funding_fee", "other_income")}
        for row in payload["rows"]:
            for kind, amount in row["income_by_type"].items():
                totals[INCOME_COLUMNS.get(kind, "other_income")] += Decimal(amount)

        def run(conn: Connection) -> dict[str, Any]:
            latest = conn.execute(
                select(DAYS).where(DAYS.c.day == day).order_by(DAYS.c.revision.desc()).limit(1)
            ).first()
            if latest is not None and latest.payload_hash == digest:
                return {"day": day.isoformat(), "revision": latest.revision, "created": False, "restated": False}
            revision = (latest.revision if latest is not None else 0) + 1
            conn.execute(
                insert(DAYS).values(
                    day=day,
                    revision=revision,
                    is_final=payload["is_final"],
                    row_count=payload["row_count"],
                    first_income_time_ms=payload.get("first_income_time_ms"),
                    last_income_time_ms=payload.get("last_income_time_ms"),
                    wallet_balance=Decimal(payload["wallet_balance"]),
                    balance_as_of_ms=payload["balance_as_of_ms"],
                    income_after_day_end=dict(payload["income_after_day_end"]),
                    rows=list(payload["rows"]),
                    payload_hash=digest,
                    source_run_id=payload["source_run_id"],
                    received_at=utcnow(),
                    service=service,
                    **totals,
                )
            )
            restated = bool(latest is not None and latest.is_final)
            return {"day": day.isoformat(), "revision": revision, "created": True, "restated": restated}

        out: dict[str, Any] = self.store._write_until_no_conflict(run, CONFLICT_RETRIES)
        return out

    def put_positions(self, payload: Mapping[str, Any], service: str) -> dict[str, Any]:
        rows = list(payload["rows"])
        digest = hashlib.sha256(canonical({"rows": rows}).encode()).hexdigest()

        def run(conn: Connection) -> dict[str, Any]:
            found = conn.execute(select(SNAPSHOTS).where(SNAPSHOTS.c.as_of_ms == payload["as_of_ms"])).first()
            if found is not None:
                if found.payload_hash != digest:
                    why = f"a snapshot at as_of_ms {payload['as_of_ms']} holds other rows; snapshots are immutable"
                    raise AdjustmentConflict(why)
                return {"as_of_ms": payload["as_of_ms"], "created": False}
            conn.execute(
                insert(SNAPSHOTS).values(
                    as_of_ms=payload["as_of_ms"],
                    source_run_id=payload["source_run_id"],
                    payload_hash=digest,
                    position_count=len(rows),
                    rows=rows,
                    received_at=utcnow(),
                    service=service,
                )
            )
            return {"as_of_ms": payload["as_of_ms"], "created": True}

        out: dict[str, Any] = self.store._write_until_no_conflict(run, CONFLICT_RETRIES)
        return out

    # -- tie-out ----------------------------------------------------------------------------

    def tieout(self, first: dt.date, last: dt.date, tolerance: Decimal) -> dict[str, Any]:
        """Per day: the exchange's realised PnL + commission (newest revision) against our daily PnL."""
        newest = (
            select(DAYS.c.day, func.max(DAYS.c.revision).label("revision"))
            .where(DAYS.c.day >= first, DAYS.c.day <= last)
            .group_by(DAYS.c.day)
            .subquery()
        )
        with self.store._read() as conn:
            days = {
                r.day: r
                for r in conn.execute(
                    select(DAYS).join(newest, (DAYS.c.day == newest.c.day) & (DAYS.c.revision == newest.c.revision))
                )
            }
            ours = {
                r.date: Decimal(r.daily_pnl)
                for r in conn.execute(
                    select(DAILY_PNL.c.date, DAILY_PNL.c.daily_pnl).where(
                        DAILY_PNL.c.date >= first, DAILY_PNL.c.date <= last
                    )
                )
            }
        out, cumulative = [], Decimal(0)
        for n in range((last - first).days + 1):
            day = first + dt.timedelta(days=n)
            row, ledger = days.get(day), ours.get(day)
            exchange = Decimal(row.realized_pnl) + Decimal(row.commission) if row is not None else None
            variance = (ledger or Decimal(0)) - (exchange or Decimal(0))
            if row is None and ledger is None:
                status = "no_data"
            elif row is None:
                status = "exchange_missing"
            elif ledger is None:
                status = "ledger_missing"
            else:
                status = "tied" if abs(variance) <= tolerance else "break"
            if row is not None and ledger is not None:
                cumulative += variance
            out.append(
                {
                    "day": day.isoformat(),
                    "realized_and_fees": {
                        "exchange": _s(exchange),
                        "ledger": _s(ledger),
                        "variance": _s(variance),
                    },
                    "funding": {"exchange": _s(Decimal(row.funding_fee)) if row is not None else None, "ledger": None},
                    "other_income_total": _s(Decimal(row.other_income)) if row is not None else None,
                    "unexplained": _s(variance if row is not None and ledger is not None else Decimal(0)),
                    "cumulative_variance": _s(cumulative),
                    "tolerance": _s(tolerance),
                    "break": status == "break",
                    "status": status,
                    "revision": row.revision if row is not None else None,
                    "is_final": bool(row.is_final) if row is not None else None,
                }
            )
        return {"from": first.isoformat(), "to": last.isoformat(), "days": out, "cumulative_variance": _s(cumulative)}

    def positions_tieout(self) -> dict[str, Any]:
        """Open ledger rows against the exchange's newest snapshot: rows the exchange does not hold are phantoms."""
        with self.store._read() as conn:
            snap = conn.execute(select(SNAPSHOTS).order_by(SNAPSHOTS.c.as_of_ms.desc()).limit(1)).first()
            opened = conn.execute(
                select(POSITIONS.c.position_id, POSITIONS.c.symbol, POSITIONS.c.position_side).where(
                    POSITIONS.c.status == "open"
                )
            ).all()
        grouped: dict[tuple[str, str], list[str]] = {}
        for pid, symbol, side in opened:
            grouped.setdefault((symbol, side), []).append(pid)
        ledger_rows = [
            {"symbol": s, "position_side": side, "ledger_open_rows": len(ids), "position_ids": sorted(ids)}
            for (s, side), ids in sorted(grouped.items())
        ]
        if snap is None:
            return {"as_of_ms": None, "ledger_open_rows": ledger_rows, "exchange_positions": [], "phantom_rows": []}
        exchange = {(r["symbol"], r["position_side"]): r for r in snap.rows}
        return {
            "as_of_ms": snap.as_of_ms,
            "ledger_open_rows": ledger_rows,
            "exchange_positions": [
                {"symbol": s, "position_side": side, "quantity": r["quantity"]}
                for (s, side), r in sorted(exchange.items())
            ],
            "phantom_rows": [r for r in ledger_rows if (r["symbol"], r["position_side"]) not in exchange],
            "unbooked_positions": [
                {"symbol": s, "position_side": side} for (s, side) in sorted(exchange) if (s, side) not in grouped
            ],
        }

    # -- adjustments ------------------------------------------------------------------------

    @staticmethod
    def _chain_insert(conn: Connection, values: Mapping[str, Any]) -> dict[str, Any]:
        last = conn.execute(
            select(ADJUSTMENTS.c.row_hash).order_by(ADJUSTMENTS.c.chain_position.desc()).limit(1)
        ).scalar()
        prev = last or ""
        row = {**values, "prev_hash": prev}
        row["row_hash"] = row_hash(prev, {k: row[k] for k in HASHED})
        conn.execute(insert(ADJUSTMENTS).values(row))
        return row

    @staticmethod
    def _adjustment(conn: Connection, adjustment_id: str) -> dict[str, Any] | None:
        found = conn.execute(select(ADJUSTMENTS).where(ADJUSTMENTS.c.adjustment_id == adjustment_id)).first()
        return dict(found._mapping) if found is not None else None

    def add_adjustment(self, values: Mapping[str, Any], service: str) -> tuple[dict[str, Any], bool]:
        """Append an adjustment; (the row, whether it is new). A repeat of a stored one answers it."""

        def run(conn: Connection) -> tuple[dict[str, Any], bool]:
            found = self._adjustment(conn, values["adjustment_id"])
            if found is not None:
                same = all(
                    canonical(found[k]) == canonical(values[k]) for k in HASHED if k in values and k != "prev_hash"
                )
                if not same:
                    raise AdjustmentConflict(
                        f"adjustment {values['adjustment_id']!r} is stored with other content; ids name one adjustment"
                    )
                return found, False
            if values["run_mode"] == "apply":
                ref = values.get("dry_run_adjustment_id")
                dry = self._adjustment(conn, ref) if ref else None
                if dry is None or dry["run_mode"] != "dry_run":
                    raise NotFound(f"apply needs an earlier dry_run adjustment; {ref!r} is not one")
                for k in ("target_table", "target_key", "before", "after"):
                    if canonical(dry[k]) != canonical(values[k]):
                        raise AdjustmentConflict(f"{k} differs from dry run {ref!r}")
            return self._chain_insert(conn, {**values, "service": service}), True

        out: tuple[dict[str, Any], bool] = self.store._write_until_no_conflict(run, CONFLICT_RETRIES)
        return out

    def adjustments(
        self,
        *,
        first: dt.datetime | None = None,
        last: dt.datetime | None = None,
        target_table: str | None = None,
        target_key: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        t = ADJUSTMENTS
        stmt = select(t).order_by(t.c.chain_position).limit(limit)
        if first is not None:
            stmt = stmt.where(t.c.applied_at >= first)
        if last is not None:
            stmt = stmt.where(t.c.applied_at < last)
        if target_table is not None:
            stmt = stmt.where(t.c.target_table == target_table)
        if target_key is not None:
            stmt = stmt.where(t.c.target_key == target_key)
        with self.store._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def chain(self) -> list[dict[str, Any]]:
        with self.store._read() as conn:
            return [dict(r._mapping) for r in conn.execute(select(ADJUSTMENTS).order_by(ADJUSTMENTS.c.chain_position))]

    def supersede(self, s: Supersede) -> tuple[dict[str, Any], bool]:
        """Mark a position superseded if it still equals ``expected_before``; (the apply adjustment, whether new)."""

        def run(conn: Connection) -> tuple[dict[str, Any], bool]:
            stmt = select(POSITIONS).where(POSITIONS.c.position_id == s.position_id)
            if conn.dialect.name in ("mysql", "mariadb", "postgresql"):
                stmt = stmt.with_for_update()
            found = conn.execute(stmt).first()
            if found is None:
                raise NotFound(f"no position {s.position_id!r}")
            row = dict(found._mapping)
            previous = conn.execute(
                select(ADJUSTMENTS)
                .where(
                    ADJUSTMENTS.c.target_table == "positions",
                    ADJUSTMENTS.c.target_key == s.position_id,
                    ADJUSTMENTS.c.run_mode == "apply",
                    ADJUSTMENTS.c.dry_run_adjustment_id == s.dry_run_adjustment_id,
                )
                .limit(1)
            ).first()
            if row["status"] == "superseded" and previous is not None:
                return dict(previous._mapping), False  # a retry of a supersede that happened
            for name, want in s.expected_before.items():
                have = row.get(name)
                if canonical(have) != canonical(want):
                    raise Drift(name, want, have)
            dry = self._adjustment(conn, s.dry_run_adjustment_id)
            if dry is None or dry["run_mode"] != "dry_run" or dry["target_key"] != s.position_id:
                raise NotFound(
                    f"dry_run_adjustment_id {s.dry_run_adjustment_id!r} is not a dry run of position {s.position_id!r}"
                )
            before = {
                "status": row["status"],
                "close_reason": row["close_reason"],
                "pnl_unknown": bool(row["pnl_unknown"]),
                **{k: row[k] for k in sorted(MONEY_COLUMNS) if row.get(k) is not None},
            }
            after = {**before, "status": "superseded", "close_reason": s.reason_code, "pnl_unknown": True}
            adjustment = self._chain_insert(
                conn,
                {
                    "adjustment_id": uuid.uuid4().hex,
                    "applied_at": utcnow(),
                    "applied_by": s.applied_by,
                    "approved_by": s.approved_by,
                    "target_table": "positions",
                    "target_key": s.position_id,
                    "before": json.loads(canonical(before)),
                    "after": json.loads(canonical(after)),
                    "reason_code": s.reason_code,
                    "evidence_ref": s.evidence_ref,
                    "run_mode": "apply",
                    "dry_run_adjustment_id": s.dry_run_adjustment_id,
                    "service": s.service,
                },
            )
            conn.execute(
                update(POSITIONS)
                .where(POSITIONS.c.id == row["id"])
                .values(
                    status="superseded",
                    close_reason=s.reason_code,
                    pnl_unknown=True,
                    open_slot=None,
                    updated_at=utcnow(),
                )
            )
            return adjustment, True

        out: tuple[dict[str, Any], bool] = self.store._write_until_no_conflict(run, CONFLICT_RETRIES)
        return out


def _s(value: Decimal | None) -> str | None:
    if value is None:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text if text not in ("", "-") else "0"
