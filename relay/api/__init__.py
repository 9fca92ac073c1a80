"""The admin HTTP API on the relay: ``hosts`` (and machines), ``dns``, ``events``, ``ui``."""
