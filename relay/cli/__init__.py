"""The ``relay`` command.

``main`` (parsing; serve, agent, edge; the options' help texts), ``options`` (options
made from the config structs), ``client`` (the admin API client and its exit statuses),
``output`` (tables for people, JSON for programs), ``admin`` (`hosts`, `machines`,
`events`), ``dns`` and ``directory`` (their admin commands).
"""
