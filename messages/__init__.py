"""Immutable messages passed between actors and processes: frozen, slotted dataclasses.

Inside a process they carry tuples (cheap); across processes they carry batches (one pickle per batch).
"""
