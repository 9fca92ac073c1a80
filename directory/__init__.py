"""Shared state of the relay: ownership, host registry, slugs, and the store they live in.

This package never imports ``relay``. Pure rules (slugs, keys, records) do no I/O; the
adapters (:mod:`directory.ownership`, :mod:`directory.hosts`) are thin shells over
redis-py that translate store errors once, into :mod:`directory.errors`.
"""
