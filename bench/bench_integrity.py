"""Bad-print detector: false-positive rate on realistic days, detection rate on injected faults.

Prints JSON. No servers. Our detector (``integrity.detect_bad_prints``, default thresholds)
beside an anchor measured on the same data in the same run: the naive detector this
project had before (close-to-close log return beyond 8 robust σ of the day, MAD-based).

* **false positives**: ``--days`` generated days of each kind — busy BTC-like days (daily
  volatility 8 %, Student-t(3) returns, volatility clustering, intraday seasonality), the
  same with a flash crash (−10 % over 3 minutes, recovered over 8), a crash of −25 %, and
  the simulated exchange's own days (``pricepath.Market``, what ``make demo`` serves):
  minutes flagged / minutes, and days with any flag / days.
* **detection**: one fault per day (``dm_assets.candles.faults``) of each kind, size
  |log factor| uniform in [0.03, 1.5] (3 % … 4.5×), on busy days (a third with a crash):
  the share of faults whose minute is flagged, overall and for faults ≥ 10 %.

    .venv/bin/python bench/bench_integrity.py --days 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dm_assets.candles.faults import FAULT_KINDS, inject, random_factor
from dm_assets.candles.integrity import MAD_TO_SIGMA, Thresholds, detect_bad_prints
from ingest_service.pricepath import GENESIS_MS, Market, realistic_day

M = 60_000


def frame(d: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(d["open"])
    return pd.DataFrame(
        {"open_time": np.arange(n, dtype=np.int64) * M, **{k: np.array(v, float) for k, v in d.items()}}
    )


def naive_flags(df: pd.DataFrame, z: float = 8.0) -> np.ndarray:
    """The anchor: |close-to-close log return − median| > z × 1.4826 × MAD, both minutes of the jump."""
    r = np.diff(np.log(df["close"].to_numpy(dtype=np.float64)))
    dev = np.abs(r - np.median(r))
    sigma = MAD_TO_SIGMA * np.median(dev)
    hit = dev > z * sigma if sigma > 0 else np.zeros(r.size, bool)
    out = np.zeros(len(df), dtype=bool)
    out[1:] |= hit
    return out


def market_day(symbol: str, day: int) -> dict[str, np.ndarray]:
    _times, cols = Market().minutes(symbol, GENESIS_MS + day * 86_400_000, GENESIS_MS + (day + 1) * 86_400_000)
    return {c: cols[c] / 100.0 for c in ("open", "high", "low", "close")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=100, help="days per kind")
    args = ap.parse_args(argv)
    th = Thresholds()

    kinds = {
        "busy_btc_day": lambda s: realistic_day(s, daily_vol=0.08),
        "busy_day_with_flash_crash_10pct": lambda s: realistic_day(s, daily_vol=0.08, crash=0.10),
        "busy_day_with_crash_25pct": lambda s: realistic_day(s, daily_vol=0.08, crash=0.25, recovery_minutes=12),
        "extreme_day_vol20pct_t2.5_crash30pct_in_2min": lambda s: realistic_day(
            s, daily_vol=0.20, tail_df=2.5, crash=0.30, crash_minutes=2, recovery_minutes=4
        ),
        "simulated_exchange_day": lambda s: market_day(("BTCUSDT", "ETHUSDT", "SOLUSDT")[s % 3], 2000 + s),
    }
    fp: dict[str, dict[str, float]] = {}
    t_ours = t_anchor = 0.0
    for name, make in kinds.items():
        flagged = days_flagged = anchor_flagged = anchor_days = minutes = 0
        for s in range(args.days):
            df = frame(make(s))
            t0 = time.perf_counter()
            ours = detect_bad_prints(df, M, th).flagged
            t1 = time.perf_counter()
            naive = naive_flags(df)
            t_ours += t1 - t0
            t_anchor += time.perf_counter() - t1
            minutes += len(df)
            flagged += int(ours.sum())
            days_flagged += bool(ours.any())
            anchor_flagged += int(naive.sum())
            anchor_days += bool(naive.any())
        fp[name] = {
            "days": args.days,
            "minutes": minutes,
            "flagged_minutes": flagged,
            "false_positive_rate": flagged / minutes,
            "days_with_a_false_positive": days_flagged,
            "anchor_flagged_minutes": anchor_flagged,
            "anchor_false_positive_rate": anchor_flagged / minutes,
            "anchor_days_with_a_false_positive": anchor_days,
        }

    rng = np.random.default_rng(2026)
    detection: dict[str, dict[str, float]] = {}
    for kind in FAULT_KINDS:
        hits = anchor_hits = big = big_hits = extra = 0
        for s in range(args.days):
            df = frame(realistic_day(10_000 + s, daily_vol=0.08, crash=0.10 if s % 3 == 0 else 0.0))
            i = int(rng.integers(30, len(df) - 30))
            factor = random_factor(kind, rng)
            rows = inject(df, kind, i, factor)
            ours = detect_bad_prints(df, M, th).flagged
            naive = naive_flags(df)
            hit = bool(ours[rows].any())
            hits += hit
            anchor_hits += bool(naive[rows].any())
            extra += int(ours.sum() - ours[rows].sum())
            if abs(np.log(factor)) >= np.log(1.10):
                big += 1
                big_hits += hit
        detection[kind] = {
            "faults": args.days,
            "detected": hits / args.days,
            "detected_at_least_10pct": big_hits / big if big else float("nan"),
            "anchor_detected": anchor_hits / args.days,
            "other_minutes_flagged": extra,
        }
    total = sum(d["detected"] for d in detection.values()) / len(detection)
    anchor_total = sum(d["anchor_detected"] for d in detection.values()) / len(detection)
    worst_fp = max(v["false_positive_rate"] for v in fp.values())
    anchor_fp = max(v["anchor_false_positive_rate"] for v in fp.values())
    print(
        json.dumps(
            {
                "thresholds": th.__dict__,
                "false_positives": fp,
                "detection": detection,
                "summary": {
                    "false_positive_rate_worst_kind": worst_fp,
                    "anchor_false_positive_rate_worst_kind": anchor_fp,
                    "detection_rate_all_faults": total,
                    "anchor_detection_rate_all_faults": anchor_total,
                    "detection_ratio_ours_to_anchor": total / anchor_total if anchor_total else None,
                    "seconds_per_day_ours": t_ours / (len(kinds) * args.days),
                    "seconds_per_day_anchor": t_anchor / (len(kinds) * args.days),
                    "time_ratio_ours_to_anchor": t_ours / t_anchor if t_anchor else None,
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
