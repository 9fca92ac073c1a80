"""Two chained byte forwarders in C (HAProxy): what two extra hops cost on this machine.

Relayed traffic crosses two more processes than direct traffic (relay, agent) and three
loopback connections instead of one. Two HAProxy processes in TCP mode, chained (client
-> haproxy -> haproxy -> upstream), make the same two hops with no HTTP, no framing, no
masking and no Python: an event loop in C, one thread each, like the relay and the
agent. The throughput scenarios (small GET, transfers, WebSocket echo) measure their
load through this chain in the same run as direct and relayed, so the bench prints, next
to each relayed/direct goal, the ratio plain C forwarding reaches here: the share of the
gap that any design of two hops pays on these two cores, whatever its code.

Splicing is off (HAProxy's default): a tunnel has to read the bytes to frame them, so
pipes between sockets are no option for it. Needs ``haproxy`` (``make bench`` installs
it).
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from loadtest.common import free_port, wait_http

if TYPE_CHECKING:
    from loadtest.common import Processes

WHAT = "two C byte forwarders (HAProxy, TCP mode)"

_CONFIG = """global
    nbthread 1
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend hop
    bind 127.0.0.1:{listen}
    default_backend next
backend next
    server next 127.0.0.1:{to}
"""


def available() -> bool:
    """Whether HAProxy is installed."""
    return shutil.which("haproxy") is not None


def start(procs: Processes, port: int) -> str:
    """Start two chained forwarders to 127.0.0.1:``port``; the base URL of the outer one."""
    inner, outer = free_port(), free_port()
    for name, listen, to in (("haproxy-inner", inner, port), ("haproxy-outer", outer, inner)):
        config = procs.tmp / f"{name}.cfg"
        config.write_text(_CONFIG.format(listen=listen, to=to))
        procs.spawn(name, ["haproxy", "-f", str(config)])
    url = f"http://127.0.0.1:{outer}"
    wait_http(url + "/")
    return url
