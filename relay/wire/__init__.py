"""What relay and agent share: frames and their codec, stream state, streams, the tunnel.

``protocol`` (frames, MessagePack codec, limits), ``streams`` (per-stream credit and
half-close, pure), ``channel`` (a stream served by a task), ``flow`` (a stream served by
callbacks), ``connection`` (the tunnel WebSocket: writer, read loop, stream table),
``http1`` (HTTP/1.1 heads written as bytes, checked). Imports nothing else of ``relay``
but ``relay.errors``.
"""
