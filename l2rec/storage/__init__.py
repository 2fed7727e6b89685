"""Where rows go: the table's schema, the sink interface, the SQLite sink, the shard -> writer link."""
