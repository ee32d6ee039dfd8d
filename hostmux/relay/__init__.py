"""The asyncio shell relaying one browser connection to any ByteStream (router and auth helper).

The public face: ``HttpRelay`` and its ``RelayLimits``; what its owner
provides (a ``Gateway`` answering with a ``Destination`` or a page; an
upstream that may fail with ``UpstreamUnavailable``); the byte streams
(``ByteStream``, ``ReaderWriterStream``, ``open_tcp_stream``); the front
door's connection set and handler; the access-log ``RequestRecord``; the
per-task ``Deadline`` and the WebSocket ``splice``. Modules inside:
``relay`` (the request loop and path), ``express`` (small kept-alive
requests from callbacks), ``response``, ``browser``, ``upstream``,
``upload``, ``outcomes``, ``splice``, ``gateway``, ``streams``,
``transport_stream``, ``front_door``, ``records``, ``deadline``. relay imports
http1, never the reverse.
"""

from hostmux.relay.deadline import Deadline
from hostmux.relay.front_door import (
    ConnectionHandler,
    ConnectionSet,
    connection_handler,
    front_door_protocol,
    start_front_door,
)
from hostmux.relay.gateway import Destination, Gateway, UpstreamPool, UpstreamUnavailable
from hostmux.relay.records import RequestRecord
from hostmux.relay.relay import HttpRelay, RelayLimits
from hostmux.relay.splice import splice
from hostmux.relay.streams import READ_CHUNK_BYTES, ByteStream, ReaderWriterStream, open_tcp_stream

__all__ = [
    "READ_CHUNK_BYTES",
    "ByteStream",
    "ConnectionHandler",
    "ConnectionSet",
    "Deadline",
    "Destination",
    "Gateway",
    "HttpRelay",
    "ReaderWriterStream",
    "RelayLimits",
    "RequestRecord",
    "UpstreamPool",
    "UpstreamUnavailable",
    "connection_handler",
    "front_door_protocol",
    "open_tcp_stream",
    "splice",
    "start_front_door",
]
