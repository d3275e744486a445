"""`fdrl serve`: live streams over WebSocket into one shared recognizer, and a browser page for them.

One concept per module: `protocol` (what a client may send), `connection` (one client, end to
end), `app` (who may connect, the page, start and stop).
"""
from stream.server.app import ServeOptions, serve
from stream.server.protocol import ProtocolError, Start

__all__ = ["ProtocolError", "ServeOptions", "Start", "serve"]
