"""Thin pykka actors, one a module: each receives a message, calls plain functions from ``l2rec``'s
rooms (venue, book, storage), and tells the next. ``base`` holds what they all share."""
