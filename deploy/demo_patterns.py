"""The demo's pattern-search story: precompute each symbol's series in Dagster, then ask the API once."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any


def show_similarity(gql: Any, base: str, symbols: Sequence[str], say: Callable[[str], None]) -> None:
    """Run ``analytics/pattern_series`` for every symbol, then print one ``/analysis/similar`` answer."""
    from dm_assets.analytics.pattern_assets import PATTERN_OP

    say("-" * 70)
    as_of = int(time.time() * 1000)
    config = {"ops": {PATTERN_OP: {"config": {"as_of_ms": as_of}}}}
    runs = {
        s: gql.launch_run("pattern_series_job", partition_key=s, run_config=config, tags={"dm/origin": "api"})
        for s in symbols
    }
    for s, run in runs.items():
        say(f"pattern_series run for {s} ({run[:8]}): {gql.wait_for_run(run, timeout=600)}")
    pair = symbols[0]
    bars = _bars_today(base, pair)
    window = max(8, min(60, bars // 4))
    query = {"pair": pair, "period": "1m", "window": window, "k": 3, "symbols": ",".join(symbols)}
    path = "/analysis/similar?" + urllib.parse.urlencode(query)
    try:
        with urllib.request.urlopen(base + path, timeout=120) as resp:
            code, body = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        code, body = exc.code, json.loads(exc.read() or b"{}")
    say(f"GET {path} -> {code}")
    if code != 200:
        say(f"  {body}")
        return
    say(f"  when did {pair}'s last {window} 1m bars look like this before, and what happened next?")
    for m in body["matches"]:
        when = dt.datetime.fromtimestamp(m["start"] / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
        ret = "n/a" if m["forward_return"] is None else f"{m['forward_return']:+.3%}"
        dd = "n/a" if m["max_drawdown"] is None else f"{m['max_drawdown']:.3%}"
        say(f"  {m['symbol']} from {when} UTC (distance {m['distance']:.3f}): next {window} bars {ret}, drawdown {dd}")
    say(f"  summary: {body['summary']}; bars from the precomputed series / candles: {body['source']}")


def _bars_today(base: str, pair: str) -> int:
    with urllib.request.urlopen(f"{base}/data/candles?pair={pair}&period=1m&limit=5000", timeout=60) as resp:
        return int(json.loads(resp.read())["count"])
