"""One relay machine's state and loops: tunnel table, events, metrics, upkeep.

``state`` (what a request handler needs, in one object), ``tunnels`` (a tunnel's relay
side and the table of held tunnels), ``events`` (tunnel events to the log, presence),
``loops`` (heartbeat, ownership refresh, takeover watch), ``ping_wheel``, ``gc_policy``,
``metrics``, ``access_log`` (``--access-log``), ``dns_setup`` (the DNS service from the
options).
"""
