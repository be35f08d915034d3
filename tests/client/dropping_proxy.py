"""A TCP proxy on 127.0.0.1 that cuts event streams in the middle of an event.

Every connection is relayed to the server as is, except that the first ``drops`` responses
carrying ``text/event-stream`` are cut, both ways, just after the start of their
``after_events + 1``-th event: the client holds ``after_events`` whole events and half of the
next one, exactly what a dropped connection leaves behind.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading

_EVENT_START = re.compile(rb"\nid: ")
_PARTIAL_BYTES = 8  # "\nid: 3\ne": the cut falls inside the event


class DroppingProxy:
    """Relays 127.0.0.1:<port> to ``target_port``, dropping the first ``drops`` streams."""

    def __init__(self, target_port: int, *, drops: int = 1, after_events: int = 2) -> None:
        """Nothing listens until ``start()``."""
        self.target_port = target_port
        self.after_events = after_events
        self.drops_left = drops
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sockets: list[socket.socket] = []

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> DroppingProxy:
        """Listen on a free port and accept connections on a thread."""
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def close(self) -> None:
        """Stop listening and close every relayed connection."""
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> DroppingProxy:
        """Start the proxy for a ``with`` block."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Close the proxy at the end of a ``with`` block."""
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _responses(self, upstream: socket.socket, client: socket.socket) -> None:
        seen = bytearray()
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                start = len(seen)
                seen += data
                cut = self._cut_at(seen)
                if cut is not None:
                    client.sendall(bytes(seen[start : max(start, cut)]))
                    for sock in (client, upstream):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    return
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def _cut_at(self, seen: bytearray) -> int | None:
        if b"text/event-stream" not in seen:
            return None
        starts = [match.start() for match in _EVENT_START.finditer(seen)]
        if len(starts) <= self.after_events:
            return None
        with self._lock:
            if self.drops_left <= 0:
                return None
            self.drops_left -= 1
            self.dropped += 1
        return starts[self.after_events] + _PARTIAL_BYTES
