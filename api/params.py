"""Query-parameter parsing: plain functions that turn client strings into safe, typed values.

Why a module of its own: every route takes the same ``pair``/``period``/``start``/``end``/
``limit`` names that existing clients already send, and each must fail the same way — a
4xx that names the parameter and says why. Nothing a client sends reaches MongoDB unless
it came out of one of these functions as an ``int`` or an upper-case ``[A-Z0-9]`` string,
so a ``pair`` of ``{"$ne": 1}`` can never become a query operator.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from api.errors import ApiError
from dm_resources.contracts import CANDLE_INTERVALS, SYMBOL_RE, duration_ms

# Intervals the candle assets build (dm_assets.candles); clients asking for another
# Binance interval get a 4xx that lists these rather than an empty page.
CANDLE_PERIODS: tuple[str, ...] = CANDLE_INTERVALS
MAX_LIMIT, DEFAULT_LIMIT = 5000, 500
# 1970-01-01 .. 9998-12-31 in epoch ms: anything outside is a typo, not a time. The last year
# is 9998 so that every bucket a time falls in (a year of 1d candles, a 1M kline) ends by 9999,
# which Python's datetime can still represent.
MAX_EPOCH_MS = 253_370_764_799_999
MAX_TIME_CHARS = 64  # "2026-03-10T00:00:00.123456+05:30" is 32; checked before any regex
_EPOCH_RE = re.compile(r"^-?[0-9]{1,19}$")
# "+00:00" sent unencoded in a query string arrives as " 00:00".
_OFFSET_TAIL_RE = re.compile(r"[0-9]{2}:?[0-9]{2}")
_ID_RE = re.compile(r"[0-9]{1,19}")
MAX_PAIR_CHARS = 64


class ParamError(ApiError, ValueError):
    """A parameter the API refuses; ``status`` is 422 for malformed, 404 for unknown values.

    ``loc`` is ``[where, param]`` (``where``: query, path, body, header).
    """

    def __init__(self, param: str, message: str, *, status: int = 422, where: str = "query") -> None:
        super().__init__(status, message, loc=(where, param), kind="not_found" if status == 404 else "value_error")
        self.param = param
        self.where = where

    def __str__(self) -> str:
        return f"{self.param}: {self.message}"


def parse_time(value: str | None, param: str) -> int | None:
    """ISO-8601 (naive means UTC) or epoch milliseconds → epoch ms; ``None`` stays ``None``."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        raise ParamError(param, "is empty; give ISO-8601 (2026-03-10T00:00:00Z) or epoch milliseconds")
    if len(text) > MAX_TIME_CHARS:
        raise ParamError(param, f"is longer than {MAX_TIME_CHARS} characters; give ISO-8601 or epoch milliseconds")
    if _EPOCH_RE.match(text):
        ms = int(text)
    else:
        head, space, tail = text.rpartition(" ")
        if space and "T" in head and _OFFSET_TAIL_RE.fullmatch(tail):
            text = f"{head}+{tail}"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ParamError(
                param, f"{value!r} is neither ISO-8601 (2026-03-10T00:00:00Z) nor epoch milliseconds"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        try:
            ms = int(parsed.timestamp() * 1000)
        except (OverflowError, OSError, ValueError):
            raise ParamError(param, f"{value!r} is out of range") from None
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise ParamError(param, f"{value!r} is outside 1970-01-01 .. 9998-12-31 (epoch ms 0 .. {MAX_EPOCH_MS})")
    return ms


def parse_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """``[start, end)`` in epoch ms; ``start`` must come before ``end`` when both are given."""
    lo, hi = parse_time(start, "start"), parse_time(end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise ParamError("start", f"start ({start}) must be before end ({end}); the range is [start, end)")
    return lo, hi


def normalise_pair(value: str | None, param: str = "pair") -> str:
    """Upper-cased symbol matching ``^[A-Z0-9]{2,30}$``; anything else (operators, JSON) is refused."""
    if value is None or not value.strip():
        raise ParamError(param, "is required, e.g. BTCUSDT")
    sym = value.strip().upper()
    if len(sym) > MAX_PAIR_CHARS or not SYMBOL_RE.match(sym):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise ParamError(param, f"{shown!r} is not a symbol: letters and digits only, 2-30 long, e.g. BTCUSDT")
    return sym


def check_known(sym: str, known: Iterable[str], param: str = "pair") -> str:
    known_set = set(known)
    if sym not in known_set:
        listed = ", ".join(sorted(known_set)[:20]) or "none yet"
        raise ParamError(param, f"{sym!r} is not a known pair; known: {listed}", status=404)
    return sym


def parse_pairs(value: str | None, param: str = "pairs", *, max_pairs: int = 50) -> list[str]:
    """A comma-separated list of pairs, each normalised, duplicates dropped in order."""
    if value is None or not value.strip():
        return []
    out: list[str] = []
    for part in value.split(","):
        if not part.strip():
            continue
        sym = normalise_pair(part, param)
        if sym not in out:
            out.append(sym)
    if len(out) > max_pairs:
        raise ParamError(param, f"at most {max_pairs} pairs per request, got {len(out)}")
    return out


def check_period(value: str, allowed: Iterable[str] = CANDLE_PERIODS, param: str = "period") -> str:
    """A candle interval the store holds; case matters (1m is a minute, 1M a month)."""
    allowed = tuple(allowed)
    if value not in allowed:
        hint = " (1s exists on spot only)" if value == "1s" else ""
        raise ParamError(param, f"{value!r} is not a supported interval{hint}; supported: {', '.join(allowed)}")
    return value


# Analytics periods each kind is computed on (dm_assets.analytics.build): candle kinds on every
# candle interval, spread over a 1h window, funding over 30 days. Anything else would be an
# empty 200, so it is a 422 that names what is computed.
ANALYTICS_PERIODS: dict[str, tuple[str, ...]] = {
    "volatility": CANDLE_PERIODS,
    "volume": CANDLE_PERIODS,
    "trend": CANDLE_PERIODS,
    "correlation": CANDLE_PERIODS,
    "spread": ("1h",),
    "funding": ("30d",),
}


def check_analytics_period(value: str, param: str = "period", kind: str | None = None) -> str:
    """An interval or lookback label by the one duration rule, and one that ``kind`` is computed on."""
    try:
        if len(value) > 4:
            raise ValueError(value)
        duration_ms(value)
    except ValueError:
        raise ParamError(param, f"{value!r} is not an interval label such as 1m, 1h, 30d or 1w (no months)") from None
    computed = ANALYTICS_PERIODS.get(kind or "")
    if computed is not None and value not in computed:
        raise ParamError(param, f"{kind} is not computed for {value!r}; computed periods: {', '.join(computed)}")
    return value


def parse_after(value: str | None, param: str = "after") -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not _ID_RE.fullmatch(text) or int(text) > 2**63 - 1:
        raise ParamError(param, f"{value[:40]!r} is not a non-negative integer id (from a 'next' link)")
    return int(text)
