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
