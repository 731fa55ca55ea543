"""Response models of the platform's rows, derived from their one definition.

A position row is declared once, as the ``positions`` table (``dm_resources/metadata/models.py``);
``datasets.table_fields`` turns its columns into the contract's typed fields, and this module
turns those fields into the pydantic models the typed routes publish at ``/openapi.json``.
A column added to the table therefore appears in the filters, the validation of writes and
the responses at once, with the same type everywhere.

Decimals are exact strings without ``DECIMAL(38, 18)``'s padding zeros, times ISO-8601 UTC.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, PlainSerializer, create_model

from api.contract.datasets import DAILY_PNL_FIELDS, POSITION_FIELDS, POSITION_STATUSES, FieldSpec, FieldType
from api.contract.service import decimal_str
from dm_resources.metadata.platform import TABLES

# Exact decimal strings in JSON, Decimal in Python.
Dec = Annotated[Decimal, PlainSerializer(decimal_str, return_type=str, when_used="json")]

_PY_TYPES: dict[FieldType, Any] = {
    "str": str,
    "symbol": str,
    "int": int,
    "float": float,
    "decimal": Dec,
    "datetime": dt.datetime,
    "date": dt.date,
    "bool": bool,
    "json": dict[str, Any],
    "list": list[Any],
}


def row_model(
    name: str, table: str, fields: dict[str, FieldSpec], doc: str, *, vocab: dict[str, tuple[str, ...]] | None = None
) -> Any:
    """A pydantic model of ``table``'s public row: NOT NULL columns required, the others optional.

    ``vocab`` narrows string fields to their allowed values (``Literal``), as the table's CHECKs do.
    """
    columns = TABLES[table].c
    definitions: dict[str, Any] = {}
    for spec in fields.values():
        py: Any = _PY_TYPES[spec.type]
        if vocab and spec.name in vocab:
            py = Literal[vocab[spec.name]]
        if columns[spec.name].nullable:
            definitions[spec.name] = (py | None, None)
        else:
            definitions[spec.name] = (py, ...)
    return create_model(name, __doc__=doc, __config__=ConfigDict(extra="forbid"), **definitions)


_PositionRow: Any = row_model(
    "Position",
    "positions",
    POSITION_FIELDS,
    "One position; fields the engine has not sent yet are null.",
    vocab={"status": POSITION_STATUSES},
)
_DailyPnlRow: Any = row_model("DailyPnl", "daily_pnl", DAILY_PNL_FIELDS, "The trade engine's PnL of one UTC day.")


class Position(_PositionRow):
    """One position; fields the engine has not sent yet are null."""


class DailyPnl(_DailyPnlRow):
    """The trade engine's PnL of one UTC day."""


__all__ = ["DailyPnl", "Dec", "Position", "decimal_str", "row_model"]
