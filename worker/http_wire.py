"""HTTP/1.1 responses read without I/O: the head (status line and headers), then the body's framing.

worker/http_stream.py feeds this what its socket receives. It is hand-written because the
library path (httpx2 → httpcore2 → h11) was the largest share of a job's CPU, about 18 µs
per SSE chunk (docs/PERFORMANCE.md §7), for one kind of exchange: a POST whose answer is
one streamed body. It reads what RFC 9112 lets a server send: chunked bodies (with chunk
extensions and trailers), Content-Length, a body that ends when the connection closes, bare
LF line ends, obsolete header folding; anything else is a `ProtocolError`.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from enum import Enum, auto

MAX_HEAD = 64 * 1024  # a head longer than this is an attack or a broken server
MAX_LINE = 8 * 1024  # a chunk-size or trailer line

_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([^\r\n]*))?")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ProtocolError(Exception):
    """The server broke HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    reason: str
    http10: bool  # an HTTP/1.0 answer: the connection closes unless it says keep-alive
    headers: list[tuple[bytes, bytes]]  # names in lower case, in the order sent

    def get(self, name: bytes) -> bytes | None:
        """The header's value; repeated headers joined with commas, as RFC 9110 §5.3 allows."""
        values = [value for key, value in self.headers if key == name]
        return b", ".join(values) if values else None

    def tokens(self, name: bytes) -> list[bytes]:
        """A comma-separated header's elements, in lower case (Connection, Transfer-Encoding)."""
        value = self.get(name)
        return [] if value is None else [part.strip().lower() for part in value.split(b",") if part.strip()]


def parse_head(buffer: bytes | bytearray) -> tuple[Head, int] | None:
    """The head at the start of `buffer` and how many bytes it took, or None while it is incomplete."""
    end = _head_end(buffer)
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise ProtocolError(f"the response head is longer than {MAX_HEAD} bytes")
        return None
    lines = bytes(buffer[:end]).split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    major, minor, status, reason = match.groups()
    if major != b"1":
        raise ProtocolError(f"HTTP/{major.decode()}.{minor.decode()} is not HTTP/1.x")
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):  # obsolete line folding: part of the previous value
            if not headers:
                raise ProtocolError("the response head starts with a folded line")
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise ProtocolError(f"not a header line: {line[:80]!r}")
        headers.append((name.lower(), value.strip(b" \t")))
    head = Head(int(status), (reason or b"").decode("latin-1"), minor == b"0", headers)
    return head, end


def _head_end(buffer: bytes | bytearray) -> int:
    """Where the head ends (past its blank line), or -1."""
    crlf = buffer.find(b"\n\r\n")
    lf = buffer.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return -1
    if lf < 0 or 0 <= crlf < lf:
        return crlf + 3
    return lf + 2


class _Framing(Enum):
    EMPTY = auto()
    LENGTH = auto()
    CHUNKED = auto()
    UNTIL_CLOSE = auto()


class _Chunk(Enum):
    SIZE = auto()
    DATA = auto()
    DATA_END = auto()
    TRAILER = auto()


class Body:
    """One response body's framing (RFC 9112 §6.3): `feed` what arrives, get the payload bytes.

    `done` once the body has ended; `reusable` when the connection may then carry another request.
    """

    def __init__(self, head: Head) -> None:
        self.done = False
        self._pending = b""
        self._remaining = 0
        self._chunk = _Chunk.SIZE
        self._decoder = _decoder(head)
        connection = head.tokens(b"connection")
        keep_alive = b"keep-alive" in connection if head.http10 else b"close" not in connection
        codings = head.tokens(b"transfer-encoding")
        length = head.get(b"content-length")
        if head.status < 200 or head.status in (204, 304):
            self._framing = _Framing.EMPTY
        elif codings:
            # RFC 9112 §6.3: chunked last means chunked; any other coding runs to the close.
            self._framing = _Framing.CHUNKED if codings[-1] == b"chunked" else _Framing.UNTIL_CLOSE
            if codings != [b"chunked"] and codings[-1] == b"chunked":
                raise ProtocolError(f"transfer coding {b', '.join(codings).decode()!r} is not supported")
        elif length is not None:
            self._framing = _Framing.LENGTH
            self._remaining = _content_length(length)
        else:
            self._framing = _Framing.UNTIL_CLOSE
        self.reusable = keep_alive and self._framing is not _Framing.UNTIL_CLOSE
        if self._framing is _Framing.EMPTY or (self._framing is _Framing.LENGTH and not self._remaining):
            self.done = True

    def feed(self, data: bytes) -> bytes:
        """The payload in `data`; what comes after the body's end makes the connection unusable."""
        if self.done:
            if data:
                self.reusable = False
            return b""
        if self._framing is _Framing.CHUNKED:
            payload = self._feed_chunked(data)
        elif self._framing is _Framing.LENGTH:
            payload = data[: self._remaining]
            self._remaining -= len(payload)
            if not self._remaining:
                self.done = True
                self.reusable = self.reusable and len(data) == len(payload)
        else:
            payload = data
        return self._decoder.decompress(payload) if self._decoder is not None and payload else payload

    def end_of_input(self) -> bytes:
        """The connection closed: the rest of the payload, or ProtocolError if the body was cut short."""
        if self.done:
            return b""
        if self._framing is not _Framing.UNTIL_CLOSE:
            raise ProtocolError("the server closed the connection before the end of the response body")
        self.done = True
        self.reusable = False
        return self._decoder.flush() if self._decoder is not None else b""

    def _feed_chunked(self, data: bytes) -> bytes:
        buf = self._pending + data if self._pending else data
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size and not self.done:
            if self._chunk is _Chunk.DATA:
                take = min(self._remaining, size - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._chunk = _Chunk.DATA_END
                continue
            end = buf.find(b"\n", pos)
            if end < 0:
                if size - pos > MAX_LINE:
                    raise ProtocolError(f"a chunk line longer than {MAX_LINE} bytes")
                break
            line = buf[pos:end].rstrip(b"\r")
            pos = end + 1
            if self._chunk is _Chunk.SIZE:
                self._start_chunk(line)
            elif self._chunk is _Chunk.DATA_END:
                if line:
                    raise ProtocolError("a chunk's data is longer than its size says")
                self._chunk = _Chunk.SIZE
            elif not line:  # the blank line after the trailers ends the body
                self.done = True
        self._pending = buf[pos:] if not self.done else b""
        if self.done and pos < size:
            self.reusable = False
        return b"".join(out)

    def _start_chunk(self, line: bytes) -> None:
        size_field = line.split(b";", 1)[0].strip(b" \t")
        if _CHUNK_SIZE.fullmatch(size_field) is None:
            raise ProtocolError(f"not a chunk size: {line[:40]!r}")
        self._remaining = int(size_field, 16)
        self._chunk = _Chunk.DATA if self._remaining else _Chunk.TRAILER


def _content_length(value: bytes) -> int:
    lengths = {part.strip() for part in value.split(b",")}  # repeats must agree (RFC 9110 §8.6)
    if len(lengths) != 1 or not next(iter(lengths)).isdigit():
        raise ProtocolError(f"not a Content-Length: {value[:40]!r}")
    return int(next(iter(lengths)))


def _decoder(head: Head) -> zlib._Decompress | None:
    """A decompressor for the body's Content-Encoding (asked for none, but gzip and deflate are read)."""
    codings = [coding for coding in head.tokens(b"content-encoding") if coding != b"identity"]
    if not codings:
        return None
    if codings in ([b"gzip"], [b"x-gzip"]):
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if codings == [b"deflate"]:
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise ProtocolError(f"content coding {b', '.join(codings).decode()!r} is not supported")
