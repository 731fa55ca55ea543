"""Fault injection into candle frames: the faults the bad-print detector must catch.

Shared by ``bench/bench_integrity.py`` (detection rate) and the tests, so the README's
number is measured on exactly the faults the tests inject. Each fault changes one minute
(``two_minutes``: two) of a frame with ``open/high/low/close`` and returns the minutes it
touched.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FAULT_KINDS = ("whole_candle", "two_minutes", "wick_high", "wick_low", "bad_open", "bad_close")


def inject(df: pd.DataFrame, kind: str, i: int, factor: float) -> list[int]:
    """Apply fault ``kind`` at row ``i`` with size ``factor`` (price multiplier); returns the rows changed.

    * ``whole_candle`` / ``two_minutes``: every price of the row(s) × factor (a REST row at 2.4×);
    * ``wick_high`` / ``wick_low``: the high (low) at factor × the body's top (bottom) — a spike
      inside the minute (one bad trade, a websocket kline with a wrong high);
    * ``bad_open`` / ``bad_close``: the first (last) trade of the minute × factor, the range
      stretched to include it.
    """
    prices = ["open", "high", "low", "close"]
    if kind in ("whole_candle", "two_minutes"):
        rows = [i] if kind == "whole_candle" else [i, i + 1]
        for r in rows:
            df.loc[r, prices] = df.loc[r, prices].to_numpy(dtype=np.float64) * factor
        return rows
    o, c = float(df.at[i, "open"]), float(df.at[i, "close"])
    if kind == "wick_high":
        df.at[i, "high"] = max(o, c) * factor
    elif kind == "wick_low":
        df.at[i, "low"] = min(o, c) * factor
    elif kind in ("bad_open", "bad_close"):
        col = "open" if kind == "bad_open" else "close"
        v = float(df.at[i, col]) * factor
        df.at[i, col] = v
        df.at[i, "high"] = max(float(df.at[i, "high"]), v)
        df.at[i, "low"] = min(float(df.at[i, "low"]), v)
    else:
        raise ValueError(f"unknown fault {kind!r}; known: {FAULT_KINDS}")
    return [i]


def random_factor(kind: str, rng: np.random.Generator, lo: float = 0.03, hi: float = 1.5) -> float:
    """A fault size: |log factor| uniform in [lo, hi] (3 % … 4.5×), up or down at random.

    Wicks go up for ``wick_high`` and down for ``wick_low``.
    """
    size = float(np.exp(rng.uniform(lo, hi)))
    if kind == "wick_high":
        return size
    if kind == "wick_low":
        return 1.0 / size
    return size if rng.random() < 0.5 else 1.0 / size
