"""The public side: client connections, routing by Host, proxying through tunnels.

``front`` (the listener: httptools-parsed connections, handoff to aiohttp), ``exchange``
(one request through a tunnel, by callbacks), ``app_path`` (requests served through
aiohttp: hosts held elsewhere or offline, replay and forward), ``websocket`` (client
WebSockets through a tunnel), ``forward`` (machine to machine), ``headers``, ``origin``,
``routing`` (pure rules), ``error_pages``, ``responses`` (answers the relay makes),
``traffic`` (what a request on the aiohttp path moved, for metrics and the access log).
"""
