"""A Server-Sent Events reader: lines in, events out (the WHATWG event-stream rules)."""

from __future__ import annotations

import json

from ccgate.client.schema import Event

__all__ = ["SSEDecoder"]


class SSEDecoder:
    """Turns the lines of one event stream into events; a new decoder per connection.

    An event is only handed out at the blank line that ends it, so the half of an event cut
    off by a dropped connection is never seen.
    """

    def __init__(self) -> None:
        """Start with no event pending."""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        """Take one line (without its line break); the event it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment, such as the heartbeat
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        event, data, raw_id = self._event or "message", self._data, self._id
        self._event, self._data, self._id = "", [], None
        if not data:
            return None
        text = "\n".join(data)
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        event_id = int(raw_id) if raw_id is not None and raw_id.isdigit() else None
        return Event(id=event_id, event=event, data=payload)
