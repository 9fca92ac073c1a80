"""The ``relay`` command.

``main`` (parsing; serve, agent, edge), ``client`` (the admin API client), ``dns`` and
``directory`` (their admin commands).
"""
