"""``python -m ingest_service``: run one ingest replica until SIGTERM/SIGINT (exit 0).

Bad configuration, including a metrics port already taken, exits 2 with one line on stderr.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from dm_resources.settings import SettingsError, load_settings
from ingest_service.config import load_ingest_settings
from ingest_service.metrics import setup_logging
from ingest_service.service import IngestService


async def _main() -> int:
    try:
        settings = load_settings()
        ingest = load_ingest_settings()
    except SettingsError as exc:
        print(f"ingest_service: {exc}", file=sys.stderr)
        return 2
    setup_logging(ingest.log_level, ingest.log_json)
    service = IngestService(settings, ingest)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    try:
        return await service.run()
    except SettingsError as exc:  # e.g. the metrics port is taken: one line, not a traceback
        print(f"ingest_service: {exc}", file=sys.stderr)
        return 2


def main() -> int:
    return asyncio.run(_main())


if __name__ == "__main__":
    raise SystemExit(main())
