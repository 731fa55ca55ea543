"""Candles stored as buckets: one document per symbol × interval × UTC day (1d: per UTC year).

Why buckets: SecantusDB (the embedded store) pays per document. A year of 1m candles as
525,600 documents took 27–28 s to read; as 365 day documents it is one bounded index read
of 365 documents. A date × symbol partition of a candle asset *is* one bucket, replaced whole
and atomically (``replace_one`` on a deterministic ``_id``), so a reader never sees half a
partition. This is the chunking Arctic used for market data on MongoDB and what MongoDB's
time-series collections do internally.

Prices are float64, as every candle was before (candles are computed values; the raw
collections keep the exchange's decimal strings).

One job per module, as Arctic keeps them apart:

* ``layout`` — how a time range becomes buckets (UTC days; UTC years for 1d), bucket ids;
* ``bucket`` — one bucket's candles in memory as numpy columns: merge, slice, rows, frame;
* ``codec`` — a bucket as a MongoDB document and back, with its encoding version;
* ``store`` — ``CandleStore``: reads and optimistic-concurrency writes over a ``MongoStore``;
* ``versions`` — the dataset version counters the API cache watches;
* ``migrations`` and ``cli`` — the migrations (legacy per-candle documents; old bucket encodings)
  and ``python -m dm_resources.candle_store``.
"""

from dm_resources.candle_store.bucket import (
    FLOAT_COLUMNS,
    INT_COLUMNS,
    NUMERIC_COLUMNS,
    ROW_FIELDS,
    Bucket,
    Coded,
    normalize_fields,
)
from dm_resources.candle_store.cli import main
from dm_resources.candle_store.codec import ENCODING, READABLE_ENCODINGS, decode_bucket, decode_span, encode_bucket
from dm_resources.candle_store.layout import (
    INTERVAL_MS,
    YEAR_BUCKET_INTERVALS,
    bucket_bounds,
    bucket_id,
    step_ms,
)
from dm_resources.candle_store.migrations import LEGACY, MigrationReport, ReencodeReport, migrate, reencode
from dm_resources.candle_store.store import BUCKETS, CandleStore, ConcurrentWriteError
from dm_resources.candle_store.versions import VERSIONS, bump_analytics_versions
from dm_resources.contracts import FLOOR_MS, FUTURE_SLACK_MS

__all__ = [
    "BUCKETS",
    "ENCODING",
    "FLOAT_COLUMNS",
    "FLOOR_MS",
    "FUTURE_SLACK_MS",
    "INTERVAL_MS",
    "INT_COLUMNS",
    "LEGACY",
    "NUMERIC_COLUMNS",
    "READABLE_ENCODINGS",
    "ROW_FIELDS",
    "VERSIONS",
    "YEAR_BUCKET_INTERVALS",
    "Bucket",
    "CandleStore",
    "Coded",
    "ConcurrentWriteError",
    "MigrationReport",
    "ReencodeReport",
    "bucket_bounds",
    "bucket_id",
    "bump_analytics_versions",
    "decode_bucket",
    "decode_span",
    "encode_bucket",
    "main",
    "migrate",
    "normalize_fields",
    "reencode",
    "step_ms",
]
