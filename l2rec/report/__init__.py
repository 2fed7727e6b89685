"""``l2rec report``: PNG charts, ``index.html`` and ``summary.json`` of what a training table holds.

queries (SQL aggregates into plain dataclasses), charts (matplotlib), page (index.html), summary
(summary.json), write (the command: read, draw, write). Only charts imports matplotlib (the ``report``
extra); the rest reads the database with the standard library.
"""
