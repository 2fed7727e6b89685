"""Bybit v5 public L2 order book recorder: a supervised actor pipeline into a training-data table.

Rooms by role (each a subpackage):

- ``venue``: the Bybit v5 protocol (frames, requests, endpoints), websocket frame reading, dump formats;
- ``book``: the order book, the per-topic sequence keeper, the row and its features;
- ``storage``: the table's schema, the SQLite sink and its interface, the shard -> writer link;
- ``supervision``: restart policy, backoff, states, what each child process is started with;
- ``runtime``: configuration, logs, the child -> root uplink, fault injection for tests;
- ``processes``: what each OS process runs (root, writer, shard);
- ``actors`` and ``messages``: the pykka actors and the immutable messages between them (the repository's
  top-level ``actors/`` and ``messages/`` folders).

The logic modules know nothing of pykka and are tested without threads.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from l2rec.embed import DataIngestor, DataIngestorConfig, L2Update, create_data_ingestor

# The embedding API (README "Embed it in a bot"), imported on first use: every process of the recorder
# imports this package, and none of them needs it.
__all__ = ["DataIngestor", "DataIngestorConfig", "L2Update", "create_data_ingestor"]
_EMBED = frozenset(__all__)


def __getattr__(name: str) -> Any:
    if name in _EMBED:
        import l2rec.embed

        return getattr(l2rec.embed, name)
    raise AttributeError(f"module 'l2rec' has no attribute {name!r}")
