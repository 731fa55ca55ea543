"""Strategy and application configuration: what a valid change is (plain functions, no I/O).

* **A strategy declares its parameters.** The first configuration stored for a strategy (any
  scope) declares each parameter's name and JSON type (number, bool, string, list, object).
  Every later change, override or rollback may only use declared names with values of their
  type: a misspelt ``rsi_periodd`` is refused with its name, instead of silently becoming a
  parameter no strategy reads. A change that means to add parameters says
  ``declare_parameters: true``; the audit row names what it declared.
* **The application configuration has a fixed schema** (:class:`AppConfig`); an unknown field
  is refused by name.
* Values are bounded before anything is stored: names, string lengths, list sizes, nesting,
  the encoded size.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.params import ParamError, normalise_pair

MAX_PARAMETERS = 200
MAX_NAME = 128
MAX_STRING = 1000
MAX_LIST = 200
MAX_DEPTH = 4
MAX_ENCODED = 32_768
MAX_NUMBER = 1e15
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")  # fullmatch, bounded: linear
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"  # strategy ids, as the real server's routes allow
_ID = re.compile(ID_PATTERN)
SIDES = ("LONG", "SHORT", "BOTH")
MAX_WHO = 128
MAX_REASON = 2000


@dataclass(frozen=True)
class Scope:
    """One configuration: the application, a strategy, or a strategy's symbol or symbol+side override."""

    kind: str  # "application" | "strategy"
    strategy_id: str
    symbol: str = ""
    side: str = ""

    @property
    def is_override(self) -> bool:
        return bool(self.symbol or self.side)

    def public(self) -> dict[str, Any]:
        return {"strategy_id": self.strategy_id, "symbol": self.symbol or None, "side": self.side or None}


APPLICATION = Scope("application", "application")


def strategy_scope(
    strategy_id: str, symbol: str | None = None, side: str | None = None, where: str = "path", opts: str = "query"
) -> Scope:
    """A validated strategy scope (400-free: every problem is a 422 naming the parameter)."""
    if not isinstance(strategy_id, str) or _ID.fullmatch(strategy_id) is None:
        raise ParamError("strategy_id", "must be 1-128 of A-Z a-z 0-9 _ . : -", where=where)
    sym = ""
    if symbol is not None and symbol != "":
        if not isinstance(symbol, str):
            raise ParamError("symbol", "must be a symbol such as BTCUSDT", where=opts)
        try:
            sym = normalise_pair(symbol, "symbol")
        except ParamError as exc:
            raise ParamError("symbol", exc.message, where=opts) from None
    sd = ""
    if side is not None and side != "":
        sd = side.upper() if isinstance(side, str) else ""
        if sd not in SIDES:
            raise ParamError("side", f"{str(side)[:16]!r} is not one of {', '.join(SIDES)}", where=opts)
        if not sym:
            raise ParamError("side", "a side override needs a symbol too", where=opts)
    return Scope("strategy", strategy_id, sym, sd)


# --- parameter values ----------------------------------------------------------------------------


def value_type(value: Any) -> str:
    """The declared type a JSON value has."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "unsupported"


def _check_value(name: str, value: Any, depth: int = 0) -> str | None:
    if depth > MAX_DEPTH:
        return f"{name}: nested deeper than {MAX_DEPTH} levels"
    if value is None:
        return f"{name}: null is not a value (delete the override instead)"
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name}: must be a finite number"
        if abs(value) > MAX_NUMBER:
            return f"{name}: larger than {MAX_NUMBER:.0e}"
        return None
    if isinstance(value, str):
        return f"{name}: longer than {MAX_STRING} characters" if len(value) > MAX_STRING else None
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            return f"{name}: more than {MAX_LIST} items"
        for i, item in enumerate(value):
            problem = _check_value(f"{name}[{i}]", item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        if len(value) > MAX_LIST:
            return f"{name}: more than {MAX_LIST} keys"
        for k, item in value.items():
            problem = _check_value(f"{name}.{k}", item, depth + 1)
            if problem:
                return problem
        return None
    return f"{name}: unsupported value type {type(value).__name__}"


def check_parameters(parameters: Any, where: str = "body") -> dict[str, Any]:
    """Shape and bounds of a parameters object (names, values, size); the first problem is a 422 naming it."""
    if not isinstance(parameters, Mapping):
        raise ParamError("parameters", "must be a JSON object of parameter name -> value", where=where)
    if not parameters:
        raise ParamError("parameters", "must not be empty", where=where)
    if len(parameters) > MAX_PARAMETERS:
        raise ParamError("parameters", f"more than {MAX_PARAMETERS} parameters", where=where)
    for name, value in parameters.items():
        if not isinstance(name, str) or len(name) > MAX_NAME or _NAME.fullmatch(name) is None:
            shown = str(name)[:40]
            raise ParamError(
                "parameters",
                f"parameter name {shown!r} must be 1-128 of A-Z a-z 0-9 _ . - (not a digit first)",
                where=where,
            )
        problem = _check_value(name, value)
        if problem:
            raise ParamError(name, problem, where=where)
    if len(json.dumps(parameters, separators=(",", ":"), ensure_ascii=False)) > MAX_ENCODED:
        raise ParamError("parameters", f"larger than {MAX_ENCODED // 1024} KB encoded", where=where)
    return dict(parameters)


@dataclass(frozen=True)
class ParameterProblem:
    parameter: str
    message: str


def against_declared(
    parameters: Mapping[str, Any], declared: Mapping[str, str], *, declare: bool
) -> tuple[list[ParameterProblem], dict[str, str]]:
    """Problems of ``parameters`` against a strategy's declared ones, and what it would newly declare.

    With nothing declared yet, the parameters declare themselves. With ``declare``, unknown
    names are declared too; a known name must always keep its type.
    """
    problems: list[ParameterProblem] = []
    new: dict[str, str] = {}
    for name, value in parameters.items():
        kind = value_type(value)
        known = declared.get(name)
        if known is None:
            if declared and not declare:
                problems.append(
                    ParameterProblem(
                        name,
                        f"unknown parameter {name!r}; declared: {', '.join(sorted(declared)) or 'none'} "
                        "(send declare_parameters: true to add it)",
                    )
                )
            else:
                new[name] = kind
        elif known != kind:
            problems.append(ParameterProblem(name, f"{name} must be a {known}, got a {kind}"))
    return problems, new


def raise_problems(problems: list[ParameterProblem], where: str = "body") -> None:
    if problems:
        first = problems[0]
        more = "; ".join(p.message for p in problems[1:])
        raise ParamError(first.parameter, first.message + (f"; also: {more}" if more else ""), where=where)


# --- the application configuration -------------------------------------------------------------


class AppConfig(BaseModel):
    """The TA bot's application configuration (the fields its client sends)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled_strategies: list[str] = Field(max_length=MAX_LIST)
    symbols: list[str] = Field(max_length=MAX_LIST)
    candle_periods: list[str] = Field(max_length=32)
    min_confidence: float = Field(0.6, ge=0.0, le=1.0)
    max_confidence: float = Field(0.95, ge=0.0, le=1.0)
    max_positions: int = Field(10, ge=1, le=10_000)
    position_sizes: list[int] = Field(default_factory=lambda: [100, 200, 500, 1000], max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> AppConfig:
        if self.min_confidence >= self.max_confidence:
            raise ValueError(
                f"min_confidence ({self.min_confidence}) must be less than max_confidence ({self.max_confidence})"
            )
        if not self.enabled_strategies:
            raise ValueError("enabled_strategies must not be empty")
        if not self.symbols:
            raise ValueError("symbols must not be empty")
        for name in self.enabled_strategies:
            if _ID.fullmatch(name) is None:
                raise ValueError(f"enabled_strategies: {name[:40]!r} is not a strategy id")
        for sym in self.symbols:
            if len(sym) > 32 or not sym.isalnum():
                raise ValueError(f"symbols: {sym[:40]!r} is not a symbol")
        return self


APP_DEFAULTS: dict[str, Any] = {
    "enabled_strategies": [],
    "symbols": [],
    "candle_periods": [],
    "min_confidence": 0.6,
    "max_confidence": 0.95,
    "max_positions": 10,
    "position_sizes": [100, 200, 500, 1000],
}
APP_FIELDS = tuple(AppConfig.model_fields)


def check_app_config(values: Mapping[str, Any], where: str = "body") -> dict[str, Any]:
    """The application parameters if valid; else a 422 naming the field."""
    try:
        return AppConfig.model_validate(dict(values)).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        # A cross-field rule has no location: it names its field first in the message.
        name = loc[0] if loc else next((f for f in APP_FIELDS if msg.startswith(f)), "parameters")
        if err["type"] == "extra_forbidden":
            msg = f"unknown parameter {name!r}; the application configuration has: {', '.join(APP_FIELDS)}"
        raise ParamError(name, msg, where=where) from None


def who(value: Any, name: str = "changed_by", where: str = "body") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_WHO:
        raise ParamError(name, f"must be a non-empty string of at most {MAX_WHO} characters", where=where)
    return value.strip()


def reason(value: Any, where: str = "body") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise ParamError("reason", f"must be a string of at most {MAX_REASON} characters", where=where)
    return value
