"""Bybit v5 L2 order book recorder: the root supervisor (the design card's entry point).

    python supervisor.py                                  # mainnet linear BTCUSDT depth 50 -> ./trading_bot_live.db
    python supervisor.py --replay tests/data/FILE --db out.db

The same as ``l2rec record``. The root process starts the writer process, then the shard process(es); it
runs the HealthActor and the log listener, handles signals, and drives an ordered shutdown. The code is in
``l2rec/processes/root.py`` (the root), ``l2rec/processes/{writer,shard}.py`` (the children) and
``actors/`` (what runs inside them). See README.md.
"""

import sys

from l2rec.cli import supervisor_main

if __name__ == "__main__":  # spawned children import the main module: they must not run it
    sys.exit(supervisor_main())
