"""One bucket's candles in memory: numpy columns sorted by ``open_time``, merged and sliced in numpy.

The in-memory form is independent of how a bucket is stored (``codec``) and where (``store``):
merging a partial day, trimming to a range and rendering rows or a frame happen here.
``source`` and ``flags`` stay dictionary-encoded (:class:`Coded`) from the document to the
response: a bulk read of ten years never builds a Python string or tuple per candle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dm_resources.candle_store.layout import bucket_id, step_ms
from dm_resources.contracts import CANDLE_FLOAT_FIELDS

FLOAT_COLUMNS = CANDLE_FLOAT_FIELDS
INT_COLUMNS = ("open_time", "trades")
NUMERIC_COLUMNS = ("open_time", *FLOAT_COLUMNS, "trades")
# The keys of one candle row, in the order the per-candle documents had them.
ROW_FIELDS = (
    "symbol",
    "interval",
    "open_time",
    "close_time",
    *FLOAT_COLUMNS,
    "trades",
    "source",
    "flags",
)


def _flag_key(value: Any) -> tuple[str, ...]:
    if value is None or (not isinstance(value, str) and len(value) == 0):  # most candles: no flags
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(sorted(set(value)))


@dataclass
class Coded:
    """A dictionary-encoded per-candle column: each distinct value once, one code per candle."""

    values: list[Any]  # hashable: str for source, tuple[str, ...] for flags
    codes: np.ndarray  # uint16 indexes into ``values``

    @classmethod
    def of(cls, items: Sequence[Any]) -> Coded:
        index: dict[Any, int] = {}
        codes = np.fromiter((index.setdefault(v, len(index)) for v in items), dtype=np.intp, count=len(items))
        return cls(list(index), codes.astype(np.uint16))  # a bucket holds at most 1,440 candles

    @classmethod
    def empty(cls) -> Coded:
        return cls([], np.empty(0, dtype=np.uint16))

    def __len__(self) -> int:
        return int(self.codes.size)

    def tolist(self) -> list[Any]:
        values = self.values
        return [values[c] for c in self.codes.tolist()]

    def take(self, idx: np.ndarray) -> Coded:
        return Coded(self.values, self.codes[idx])

    @classmethod
    def join(cls, parts: Sequence[Coded]) -> Coded:
        """``parts`` one after another on one value table, so that equal values have equal codes."""
        index: dict[Any, int] = {}
        codes = []
        for p in parts:
            remap = np.array([index.setdefault(v, len(index)) for v in p.values], dtype=np.uint16)
            codes.append(remap[p.codes] if p.codes.size else p.codes)
        return cls(list(index), np.concatenate(codes) if codes else np.empty(0, dtype=np.uint16))

    def compacted(self) -> Coded:
        """Only the values some candle uses, in first-use order: what gets stored."""
        if not self.codes.size:
            return Coded.empty()
        used, first = np.unique(self.codes, return_index=True)
        order = used[np.argsort(first)]
        if order.size == len(self.values) and np.array_equal(order, np.arange(order.size)):
            return self
        remap = np.zeros(len(self.values), dtype=np.uint16)
        remap[order] = np.arange(order.size, dtype=np.uint16)
        return Coded([self.values[i] for i in order.tolist()], remap[self.codes])


@dataclass
class Bucket:
    """One bucket's candles as numpy columns, sorted by open_time, unique open times."""

    symbol: str
    interval: str
    start: int
    end: int
    cols: dict[str, np.ndarray]
    source: Coded
    flags: Coded  # values: sorted tuples of flag names, () when clean
    v: int = 0

    @property
    def n(self) -> int:
        return int(self.cols["open_time"].size)

    @property
    def id(self) -> str:
        return bucket_id(self.symbol, self.interval, self.start)

    @classmethod
    def empty(cls, symbol: str, interval: str, start: int, end: int) -> Bucket:
        cols = {c: np.empty(0, dtype=np.int64 if c in INT_COLUMNS else np.float64) for c in NUMERIC_COLUMNS}
        return cls(symbol, interval, start, end, cols, Coded.empty(), Coded.empty())

    @classmethod
    def from_rows(cls, symbol: str, interval: str, start: int, end: int, rows: Sequence[Mapping[str, Any]]) -> Bucket:
        """From per-candle rows (documents or dicts with the candle keys); later duplicates win."""
        if not rows:
            return cls.empty(symbol, interval, start, end)
        ot = np.fromiter((int(r["open_time"]) for r in rows), dtype=np.int64, count=len(rows))
        cols: dict[str, np.ndarray] = {"open_time": ot}
        for c in FLOAT_COLUMNS:
            cols[c] = np.fromiter((_float(r.get(c)) for r in rows), dtype=np.float64, count=len(rows))
        cols["trades"] = np.fromiter((int(r.get("trades") or 0) for r in rows), dtype=np.int64, count=len(rows))
        source = Coded.of([str(r.get("source") or "") for r in rows])
        flags = Coded.of([_flag_key(r.get("flags")) for r in rows])
        return cls(symbol, interval, start, end, cols, source, flags)._normalized()

    @classmethod
    def from_frame(cls, symbol: str, interval: str, start: int, end: int, df: pd.DataFrame) -> Bucket:
        if df.empty:
            return cls.empty(symbol, interval, start, end)
        cols = {"open_time": df["open_time"].to_numpy(dtype=np.int64)}
        for c in FLOAT_COLUMNS:
            cols[c] = df[c].to_numpy(dtype=np.float64) if c in df else np.full(len(df), np.nan)
        cols["trades"] = df["trades"].to_numpy(dtype=np.int64) if "trades" in df else np.zeros(len(df), np.int64)
        source = Coded.of([str(s or "") for s in df["source"].tolist()] if "source" in df else [""] * len(df))
        flags = Coded.of([_flag_key(f) for f in df["flags"].tolist()] if "flags" in df else [()] * len(df))
        return cls(symbol, interval, start, end, cols, source, flags)._normalized()

    @classmethod
    def concat(cls, parts: Sequence[Bucket]) -> Bucket:
        """Consecutive buckets of one dataset (ascending, not overlapping) as one span: bulk reads batch them."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        cols = {c: np.concatenate([p.cols[c] for p in parts]) for c in NUMERIC_COLUMNS}
        source = Coded.join([p.source for p in parts])
        flags = Coded.join([p.flags for p in parts])
        return cls(first.symbol, first.interval, first.start, parts[-1].end, cols, source, flags)

    def _normalized(self) -> Bucket:
        """Sorted, deduplicated (the last row of an open_time wins), inside ``[start, end)``, aligned."""
        ot = self.cols["open_time"]
        step = step_ms(self.interval)
        if ot.size and np.any(ot % step):
            raise ValueError(f"{self.symbol} {self.interval}: open_time not aligned to the interval")
        if ot.size and (ot.min() < self.start or ot.max() >= self.end):
            raise ValueError(f"{self.symbol} {self.interval}: candles outside the bucket [{self.start}, {self.end})")
        # last occurrence of each open time, in ascending order
        rev = ot[::-1]
        _, idx_rev = np.unique(rev, return_index=True)
        idx = ot.size - 1 - idx_rev
        if idx.size == ot.size and np.all(np.diff(ot) > 0):
            return self
        self.cols = {c: a[idx] for c, a in self.cols.items()}
        self.source = self.source.take(idx)
        self.flags = self.flags.take(idx)
        return self

    def take(self, mask: np.ndarray) -> Bucket:
        idx = np.flatnonzero(mask)
        cols = {c: a[idx] for c, a in self.cols.items()}
        return Bucket(
            self.symbol, self.interval, self.start, self.end, cols, self.source.take(idx), self.flags.take(idx), self.v
        )

    def merge(self, new: Bucket, *, replace_range: tuple[int, int] | None = None) -> tuple[Bucket, int, int]:
        """``self`` overlaid with ``new``; (merged, candles added, candles changed).

        With ``replace_range``, stored candles in that range that ``new`` does not hold are dropped
        (a partition rewrite); otherwise they are kept (a partial update).
        """
        old = self
        if replace_range is not None:
            lo, hi = replace_range
            ot = old.cols["open_time"]
            keep = (ot < lo) | (ot >= hi) | np.isin(ot, new.cols["open_time"])
            old = old.take(keep)
        old_ot, new_ot = old.cols["open_time"], new.cols["open_time"]
        present = np.isin(new_ot, old_ot)
        added = int((~present).sum())
        changed = 0
        source, flags = Coded.join([old.source, new.source]), Coded.join([old.flags, new.flags])
        if present.any():
            pos = np.searchsorted(old_ot, new_ot[present])
            diff = np.zeros(int(present.sum()), dtype=bool)
            for c in NUMERIC_COLUMNS:
                a, b = old.cols[c][pos], new.cols[c][present]
                diff |= ~((a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else (a == b))
            new_pos = old.n + np.flatnonzero(present)  # on the merged value tables, equal values have equal codes
            diff |= source.codes[pos] != source.codes[new_pos]
            diff |= flags.codes[pos] != flags.codes[new_pos]
            changed = int(diff.sum())
        dropped = self.n - old.n
        cols = {c: np.concatenate([old.cols[c], new.cols[c]]) for c in NUMERIC_COLUMNS}
        merged = Bucket(self.symbol, self.interval, self.start, self.end, cols, source, flags, self.v)._normalized()
        return merged, added, changed + dropped

    # -- output ---------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        step = step_ms(self.interval)
        data: dict[str, Any] = {"open_time": self.cols["open_time"], "close_time": self.cols["open_time"] + step - 1}
        for c in FLOAT_COLUMNS:
            data[c] = self.cols[c]
        data["trades"] = self.cols["trades"]
        data["source"] = self.source.tolist()
        data["flags"] = [list(f) for f in self.flags.tolist()]  # one list per row: callers may edit them
        return pd.DataFrame(data)

    def rows(self, fields: Sequence[str] = ROW_FIELDS) -> list[dict[str, Any]]:
        """Per-candle dicts with the keys the per-candle documents had (plus ``flags``), in ``fields`` order."""
        n = self.n
        if n == 0:
            return []
        step = step_ms(self.interval)
        columns: list[list[Any]] = []
        for f in fields:
            if f == "symbol":
                columns.append([self.symbol] * n)
            elif f == "interval":
                columns.append([self.interval] * n)
            elif f == "close_time":
                columns.append((self.cols["open_time"] + step - 1).tolist())
            elif f in self.cols:
                columns.append(self.cols[f].tolist())
            elif f == "source":
                columns.append(self.source.tolist())
            elif f == "flags":
                columns.append([list(f) for f in self.flags.tolist()])
            else:
                raise KeyError(f"unknown candle field {f!r}")
        names = tuple(fields)
        return [dict(zip(names, vals, strict=True)) for vals in zip(*columns, strict=True)]


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def normalize_fields(projection: Mapping[str, Any] | Sequence[str] | None) -> tuple[str, ...]:
    """A MongoDB-style projection (``{"_id": 0, "open_time": 1}``) or a field list → row fields."""
    if projection is None:
        return ROW_FIELDS
    if isinstance(projection, Mapping):
        wanted = [k for k, v in projection.items() if v and k != "_id"]
    else:
        wanted = [k for k in projection if k != "_id"]
    if not wanted:
        return ROW_FIELDS
    unknown = [f for f in wanted if f not in ROW_FIELDS]
    if unknown:
        raise KeyError(f"unknown candle fields {unknown}; known: {ROW_FIELDS}")
    return tuple(wanted)
