"""relay-directory: a WebSocket tunnel relay with a Redis directory.

Layout (each package imports only those below it; ``directory`` never imports ``relay``)::

    cli/        the `relay` command and the admin API client          (top)
    server/     `relay serve`: aiohttp app, tunnel server, drain
    api/        admin routes: hosts, machines, DNS, events; the dashboard (/ui)
    proxy/      the public side: fast front, exchanges, replay/forward, header rules
    machine/    a machine's state: tunnel table, events, loops, metrics, DNS setup
    agent/      `relay agent`: tunnels, the pooled upstream client, output, inspector
    wire/       what relay and agent share: frames, codec, streams, the tunnel socket
    edge.py     `relay edge`, the local stand-in for Fly's proxy
    config.py   options of serve and agent;  errors.py, error_shape.py, logs.py,
                tracing.py  (bottom)
    hot_path.py the modules a proxied request runs through, compiled with mypyc if built

A client request for ``<slug>.<base-domain>`` enters at ``proxy.front``; if this
machine holds the host's tunnel it goes through ``proxy.exchange`` and ``wire`` to the
agent, whose ``agent.exchange`` calls the service with ``agent.http_client``. An agent's
``GET /tunnel`` upgrade is handed to ``server.endpoint`` (aiohttp's low-level server);
anything else to ``server.app`` (aiohttp) for one request.
"""

from relay import hot_path

__version__ = "0.1.0"

hot_path.install()  # before any module it may load compiled
