"""Candle reads for the API, from day buckets: pages, "latest N", and whole-range streams.

Why a module of its own: candles are not one document per row any more (see
``dm_resources.candle_store``), so the generic per-document reads in ``api.queries`` do not
apply. A page or a stream here reads whole day buckets with one bounded ascending index read
and slices them; rows come out with the same keys as before, so response bodies are unchanged.

Bulk bodies:

* ``ndjson`` — one JSON object per candle, rendered per bucket (orjson);
* ``arrow`` — Arrow IPC stream, one record batch per bucket, built from the bucket's numpy
  columns without per-value Python objects (the format for bulk clients: pandas/polars read
  it directly);
* ``csv`` — the same record batches through Arrow's C++ CSV writer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from api.queries import FUTURE_SLACK_MS, dumps
from dm_resources.candle_store import Bucket, CandleStore, bucket_bounds, step_ms
from dm_resources.contracts import now_ms

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
CSV_MEDIA_TYPE = "text/csv"


def read_page(
    cs: CandleStore, symbol: str, interval: str, fields: Sequence[str], start: int, end: int | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` candles from ``start`` and whether more exist.

    Without ``end`` the read walks forward in windows of whole buckets sized for ``limit`` rows
    (×4 while short), stopping a day past the wall clock.
    """
    stop = end if end is not None else max(start, now_ms()) + FUTURE_SLACK_MS
    b_lo, b_hi = bucket_bounds(interval, start)
    window = max(b_hi - b_lo, (limit + 1) * step_ms(interval))
    rows: list[dict[str, Any]] = []
    lo = start
    while len(rows) <= limit and lo < stop:
        hi = min(stop, lo + window)
        rows.extend(cs.read_range(symbol, interval, lo, hi, projection=fields, limit=limit + 1 - len(rows)))
        lo, window = hi, window * 4
    return rows[:limit], len(rows) > limit


def read_latest(
    cs: CandleStore, symbol: str, interval: str, fields: Sequence[str], n: int, end: int | None
) -> list[dict[str, Any]]:
    """The newest ``n`` candles before ``end`` (or overall), oldest first."""
    proj = list(dict.fromkeys([*fields, "open_time"]))
    rows = cs.latest(symbol, interval, n, end=end, projection=proj)
    if "open_time" not in fields:
        for r in rows:
            r.pop("open_time", None)
    return rows


def _buckets(cs: CandleStore, symbol: str, interval: str, start: int | None, end: int | None) -> Iterator[Bucket]:
    return cs.iter_buckets(symbol, interval, start, end)


def _limited(buckets: Iterator[Bucket], limit: int) -> Iterator[Bucket]:
    left = limit
    for b in buckets:
        if limit:
            if left <= 0:
                return
            if b.n > left:
                b = b.take(np.arange(b.n) < left)
            left -= b.n
        yield b


def iter_ndjson(
    cs: CandleStore,
    symbol: str,
    interval: str,
    fields: Sequence[str],
    start: int | None,
    end: int | None,
    *,
    limit: int = 0,
) -> Iterator[bytes]:
    """NDJSON, one chunk per bucket (a day of 1m candles is ~250 KB)."""
    template = b"{" + b",".join(dumps(f) + b":%s" for f in fields) + b"}"
    for b in _limited(_buckets(cs, symbol, interval, start, end), limit):
        if b.n:
            yield ndjson_bucket(b, fields, template)


def ndjson_bucket(b: Bucket, fields: Sequence[str], template: bytes) -> bytes:
    """A bucket's NDJSON without a dict per row: each column JSON-encoded once, rows filled into a template.

    Numeric columns are encoded by one orjson call per column and split on commas; string and list
    columns encode each distinct value once. Byte-identical to ``orjson.dumps(row)`` per row, and
    1.5–2× faster than building a dict per row (measured; rendering is most of an NDJSON stream).
    """
    n = b.n
    cols: list[list[bytes]] = []
    for f in fields:
        if f == "close_time":
            cols.append(dumps((b.cols["open_time"] + step_ms(b.interval) - 1).tolist())[1:-1].split(b","))
        elif f in b.cols:
            cols.append(dumps(b.cols[f].tolist())[1:-1].split(b","))
        elif f in ("symbol", "interval"):
            cols.append([dumps(getattr(b, f))] * n)
        elif f == "source":
            enc = {v: dumps(v) for v in set(b.source)}
            cols.append([enc[v] for v in b.source])
        elif f == "flags":
            fenc = {v: dumps(list(v)) for v in set(b.flags)}
            cols.append([fenc[v] for v in b.flags])
        else:
            raise KeyError(f)
    return b"\n".join([template % row for row in zip(*cols, strict=True)]) + b"\n"


def _record_batch(b: Bucket, fields: Sequence[str], schema: Any) -> Any:
    import pyarrow as pa

    arrays = []
    for f in fields:
        if f == "close_time":
            arrays.append(pa.array(b.cols["open_time"] + step_ms(b.interval) - 1))
        elif f in b.cols:
            arrays.append(pa.array(b.cols[f]))
        elif f == "source":
            arrays.append(pa.array(b.source, type=pa.string()))
        elif f == "flags":
            arrays.append(pa.array([list(x) for x in b.flags], type=pa.list_(pa.string())))
        elif f in ("symbol", "interval"):
            arrays.append(pa.array([getattr(b, f)] * b.n, type=pa.string()))
        else:
            raise KeyError(f)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def arrow_schema(fields: Sequence[str]) -> Any:
    import pyarrow as pa

    types = {"source": pa.string(), "symbol": pa.string(), "interval": pa.string(), "flags": pa.list_(pa.string())}
    ints = {"open_time", "close_time", "trades"}
    return pa.schema([(f, types.get(f, pa.int64() if f in ints else pa.float64())) for f in fields])


class _Sink:
    """A write-only file object collecting what the Arrow writer emits, drained after each batch."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def iter_arrow(
    cs: CandleStore,
    symbol: str,
    interval: str,
    fields: Sequence[str],
    start: int | None,
    end: int | None,
    *,
    limit: int = 0,
) -> Iterator[bytes]:
    """Arrow IPC stream: the schema, then one record batch per bucket, then the end-of-stream marker."""
    import pyarrow as pa

    schema = arrow_schema(fields)
    sink = _Sink()
    writer = pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), schema)
    yield sink.drain()
    for b in _limited(_buckets(cs, symbol, interval, start, end), limit):
        writer.write_batch(_record_batch(b, fields, schema))
        yield sink.drain()
    writer.close()
    yield sink.drain()


def iter_csv(
    cs: CandleStore,
    symbol: str,
    interval: str,
    fields: Sequence[str],
    start: int | None,
    end: int | None,
    *,
    limit: int = 0,
) -> Iterator[bytes]:
    """CSV with a header row; ``flags`` joined with ``|`` (CSV has no lists)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    plain = list(fields)
    schema = arrow_schema(plain)
    out_schema = pa.schema([(f.name, pa.string() if f.name == "flags" else f.type) for f in schema])
    sink = _Sink()
    writer = pacsv.CSVWriter(pa.PythonFile(sink, mode="w"), out_schema)
    yield sink.drain()
    for b in _limited(_buckets(cs, symbol, interval, start, end), limit):
        batch = _record_batch(b, plain, schema)
        if "flags" in plain:
            i = plain.index("flags")
            joined = pa.array(["|".join(x) for x in b.flags], type=pa.string())
            batch = batch.set_column(i, "flags", joined)
        writer.write_batch(batch)
        yield sink.drain()
    writer.close()
    yield sink.drain()
