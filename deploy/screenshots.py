"""Screenshots of the Dagster UI for the README (docs/*.png), taken with headless Chromium.

Needs Debian's ``chromium`` and the ``playwright`` package (driver only; it uses the system
browser), neither of which the project itself depends on:

    apt-get install chromium && pip install playwright
    python deploy/screenshots.py http://127.0.0.1:3000 docs/
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _dismiss(page: Page) -> None:
    for label in ("Skip", "Dismiss", "Got it"):
        button = page.get_by_role("button", name=label)
        if button.count():
            button.first.click()
            page.wait_for_timeout(500)


def _select(page: Page, check: str | None) -> None:
    """Open ``check`` in an asset's check list (the first one, alphabetically, is open by default)."""
    if check is not None:
        page.get_by_text(check, exact=True).first.click()
        page.wait_for_timeout(2000)


def main(base: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1700, "height": 1000})
        # (file, page, the check to select first)
        shots = [
            (
                "dagster-lineage.png",
                "/assets/candles/candles_1m?view=lineage&lineageScope=neighbors&lineageDepth=1",
                None,
            ),
            ("dagster-partitions.png", "/assets/candles/candles_1m?view=partitions", None),
            ("dagster-checks.png", "/assets/candles/candles_1m?view=checks", "no_bad_prints"),
            ("dagster-automation.png", "/automation", None),
            ("dagster-health.png", "/assets/quality/health_scores", None),
            ("dagster-orderbook.png", "/assets/orderbook/orderbook_snapshots?view=checks", None),
        ]
        for name, path, check in shots:
            # The lineage graph is zoomed to fit: a tall page keeps its labels readable.
            page.set_viewport_size({"width": 1700, "height": 2000 if "lineage" in name else 1000})
            page.goto(base + path, wait_until="load")
            page.wait_for_timeout(5000)
            _dismiss(page)
            _select(page, check)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / name))
        # The bad print's trail: no_bad_prints failed (ERROR, blocking) and passed after the repair run;
        # the order book's: orderbook_continuity passed, failed on the lost diff, the book re-synced.
        for name, path, check in (
            ("dagster-check-history.png", "/assets/candles/candles_1m?view=checks", "no_bad_prints"),
            ("dagster-orderbook-check-history.png", "/assets/orderbook/orderbook_snapshots?view=checks", None),
        ):
            page.goto(base + path, wait_until="load")
            page.wait_for_timeout(4000)
            _dismiss(page)
            _select(page, check)
            history = page.get_by_text("Execution history")
            if history.count():
                history.first.click()
                page.wait_for_timeout(3000)
                page.screenshot(path=str(out / name))
        browser.close()


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:3000",
        Path(sys.argv[2] if len(sys.argv) > 2 else "docs"),
    )
