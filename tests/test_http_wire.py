"""Reading HTTP/1.1 responses (worker/http_wire.py): every framing a server may use, in any pieces."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.http_wire import MAX_HEAD, Body, Head, ProtocolError, parse_head


def head_of(raw: bytes) -> Head:
    parsed = parse_head(raw)
    assert parsed is not None
    return parsed[0]


def read_all(raw: bytes, pieces: list[int] | None = None, close: bool = True) -> tuple[bytes, Body]:
    """The payload of a whole response, fed in pieces of the given sizes (then the rest)."""
    parsed = parse_head(raw)
    assert parsed is not None
    head, size = parsed
    body = Body(head)
    rest = raw[size:]
    out = []
    for cut in pieces or []:
        out.append(body.feed(rest[:cut]))
        rest = rest[cut:]
    out.append(body.feed(rest))
    if close and not body.done:
        out.append(body.end_of_input())
    return b"".join(out), body


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"7\r\ndata: 1\r\n"
    b"A;ext=yes\r\n\n\ndata: 22\r\n"
    b"0\r\nX-Trailer: t\r\n\r\n"
)


class TestTheHead:
    def test_status_reason_and_headers_are_read(self) -> None:
        head = head_of(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
        assert (head.status, head.reason, head.http10) == (429, "Too Many Requests", False)
        assert head.get(b"retry-after") == b"3"
        assert head.get(b"x-a") == b"1, 2"

    def test_an_incomplete_head_waits_for_more(self) -> None:
        assert parse_head(b"HTTP/1.1 200 OK\r\nContent-") is None

    def test_bare_lf_line_ends_and_a_missing_reason_are_accepted(self) -> None:
        head = head_of(b"HTTP/1.1 200\nContent-Length: 0\n\n")
        assert (head.status, head.reason, head.get(b"content-length")) == (200, "", b"0")

    def test_a_folded_header_joins_the_previous_value(self) -> None:
        assert head_of(b"HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\n\r\n").get(b"x-long") == b"a b"

    @pytest.mark.parametrize(
        "raw",
        [
            b"HTTP/2 200\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded first\r\n\r\n",
        ],
    )
    def test_what_is_not_http_1_is_refused(self, raw: bytes) -> None:
        with pytest.raises(ProtocolError):
            parse_head(raw)

    def test_an_endless_head_is_refused(self) -> None:
        with pytest.raises(ProtocolError, match="longer than"):
            parse_head(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEAD // 6 + 1))


class TestChunkedBodies:
    def test_chunks_extensions_and_trailers(self) -> None:
        payload, body = read_all(CHUNKED, close=False)
        assert payload == b"data: 1\n\ndata: 22"
        assert body.done and body.reusable

    @given(st.lists(st.integers(min_value=0, max_value=12), max_size=12))
    def test_where_the_pieces_fall_never_changes_the_payload(self, pieces: list[int]) -> None:
        payload, body = read_all(CHUNKED, pieces, close=False)
        assert payload == b"data: 1\n\ndata: 22" and body.done

    def test_bytes_after_the_last_chunk_make_the_connection_unusable(self) -> None:
        _, body = read_all(CHUNKED + b"HTTP/1.1 200 OK\r\n", close=False)
        assert body.done and not body.reusable

    def test_a_body_cut_short_is_an_error(self) -> None:
        with pytest.raises(ProtocolError, match="before the end"):
            read_all(CHUNKED[:-10])

    @pytest.mark.parametrize("size", [b"zz", b"-1", b"0x10", b"1_0", b"", b"12345678901234567"])
    def test_a_size_that_is_not_hex_is_an_error(self, size: bytes) -> None:
        with pytest.raises(ProtocolError, match="chunk size"):
            read_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabc\r\n")

    def test_data_longer_than_its_size_is_an_error(self) -> None:
        with pytest.raises(ProtocolError, match="longer than its size"):
            read_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n")

    def test_an_endless_size_line_is_an_error(self) -> None:
        with pytest.raises(ProtocolError, match="chunk line"):
            read_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1" + b"0" * 9000)


class TestOtherFramings:
    def test_content_length(self) -> None:
        payload, body = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", [2], close=False)
        assert payload == b"hello" and body.done and body.reusable

    def test_a_content_length_body_cut_short_is_an_error(self) -> None:
        with pytest.raises(ProtocolError):
            read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello")

    @pytest.mark.parametrize("value", [b"5, 6", b"-5", b"five", b"0x5"])
    def test_a_content_length_that_is_not_one_number_is_an_error(self, value: bytes) -> None:
        with pytest.raises(ProtocolError, match="Content-Length"):
            read_all(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nhello")

    def test_agreeing_repeats_of_content_length_are_one(self) -> None:
        payload, _ = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", close=False)
        assert payload == b"hello"

    def test_no_length_reads_to_the_close_and_the_connection_is_not_kept(self) -> None:
        payload, body = read_all(b"HTTP/1.1 200 OK\r\n\r\ndata: a\n\ndata: b\n\n", [5])
        assert payload == b"data: a\n\ndata: b\n\n" and body.done and not body.reusable

    def test_chunked_wins_over_content_length(self) -> None:
        raw = CHUNKED.replace(b"Transfer-Encoding", b"Content-Length: 3\r\nTransfer-Encoding")
        assert read_all(raw, close=False)[0] == b"data: 1\n\ndata: 22"

    @pytest.mark.parametrize(
        ("raw", "reusable"),
        [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", False),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n", True),
            (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        ],
    )
    def test_when_a_connection_may_carry_another_request(self, raw: bytes, reusable: bool) -> None:
        _, body = read_all(raw, close=False)
        assert body.done and body.reusable is reusable


class TestContentCodings:
    def test_gzip_is_decoded_in_any_pieces(self) -> None:
        packed = gzip.compress(b"data: hello\n\n" * 20)
        raw = (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed
        )
        assert read_all(raw, [3, 7, 11], close=False)[0] == b"data: hello\n\n" * 20

    def test_deflate_is_decoded(self) -> None:
        packed = zlib.compress(b"data: x\n\n")
        raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\n\r\n" + packed
        assert read_all(raw)[0] == b"data: x\n\n"

    def test_an_unknown_coding_is_refused_by_name(self) -> None:
        with pytest.raises(ProtocolError, match="'br'"):
            read_all(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n\r\nxx")
