"""Server-sent events read from an LLM's streamed body, as the SSE spec and the openai SDK read them.

Lines end in CRLF, LF or a bare CR, and may arrive in any pieces; `data` lines accumulate until
a blank line dispatches the event; comments (`: ping`), `id` and `retry` carry nothing here.
Two things the spec would ignore are kept, because servers use them to say a stream failed:
an `event: error` event, and llama.cpp's `error:` field line.
"""

from __future__ import annotations

from collections.abc import Iterator

ERROR = b"error"  # the event name of a failure, from `event: error` or an `error:` line


class SSEDecoder:
    """Splits an SSE byte stream into (event name or None, data) pairs."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._after_cr = False  # the last piece ended in CR: a LF that starts the next is its pair

    def feed(self, chunk: bytes) -> Iterator[tuple[bytes | None, bytes]]:
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._pending:
            chunk = self._pending + chunk
        *lines, self._pending = chunk.split(b"\n")
        for line in lines:
            if not line:  # a blank line ends the event
                if self._data:
                    yield self._event, b"\n".join(self._data)
                    self._data = []
                self._event = None
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
            elif line.startswith(b"error:"):
                yield ERROR, line[6:].strip()
            # comments (":") and other fields (id, retry) carry nothing for us
