"""``python -m dm_resources.metadata {upgrade,current,check}`` against ``DM_METADATA_URL`` (or ``--url``).

Deployments run ``upgrade`` once before starting services (services may also call
``MetadataStore.migrate()``; both are safe to run concurrently). ``check`` exits 1 when
the database is not at the head revision, for readiness gates in CI and deploy scripts.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sqlalchemy.engine import make_url

from dm_resources.metadata.store import MetadataStore, head_revision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dm_resources.metadata", description=__doc__)
    parser.add_argument("command", choices=["upgrade", "current", "check"])
    parser.add_argument("--url", help="SQLAlchemy URL (default: DM_METADATA_URL)")
    parser.add_argument("--revision", default="head", help="target revision for upgrade (default: head)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    url = args.url
    if url is None:
        from dm_resources.settings import SettingsError, get_settings

        try:
            url = get_settings().metadata_url
        except SettingsError as exc:
            print(exc, file=sys.stderr)
            return 2
    shown = make_url(url).render_as_string(hide_password=True)

    with MetadataStore(url) as store:
        if args.command == "upgrade":
            store.migrate(args.revision)
            print(f"{shown}: at revision {store.current_revision()}")
            return 0
        current, head = store.current_revision(), head_revision()
        print(f"{shown}: current={current} head={head}")
        return 0 if args.command == "current" or current == head else 1


if __name__ == "__main__":
    sys.exit(main())
