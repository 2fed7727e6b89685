"""Thin pykka actors: each receives a message, calls plain functions from ``recorder``, tells the next."""
