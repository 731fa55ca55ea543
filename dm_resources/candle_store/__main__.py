"""``python -m dm_resources.candle_store migrate``: see :mod:`dm_resources.candle_store.cli`."""

import sys

from dm_resources.candle_store.cli import main

sys.exit(main())
