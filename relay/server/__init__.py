"""The ``relay serve`` process: the aiohttp application, the tunnel endpoint, start and drain.

``main`` (``serve()``: store, listener, loops, drain on SIGTERM), ``app`` (the aiohttp
application: host traffic first, the relay's own routes behind), ``endpoint``
(``GET /tunnel``: an agent's handshake and its tunnel's life).
"""
