"""relay-directory: a WebSocket tunnel relay with a Redis directory."""

__version__ = "0.1.0"
