"""Plain logic of the recorder: Bybit protocol, order book, features, storage, config.

Nothing in this package imports pykka; every module is tested without threads.
"""
