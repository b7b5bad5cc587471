"""The worker reads the LLM's SSE bytes itself; it must see exactly what the openai SDK sees."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from rankstream.dev import example
from rankstream.settings import Settings
from worker import prompt
from worker.llm import LLMStreamError, StreamState, make_client, payload_text, stream_deltas
from worker.sse import SSEDecoder

TOOL = {
    "type": "function",
    "function": {
        "name": "rank_products",
        "parameters": {
            "type": "object",
            "properties": {
                "recommendations": {"type": "array", "items": prompt.item_schema(example.example_request())}
            },
            "required": ["recommendations"],
        },
    },
}


def sdk_deltas(sim: Simulator, body: dict[str, Any]) -> list[str]:
    client = openai.OpenAI(base_url=sim.base_url, api_key="unused", max_retries=0)
    texts = []
    for chunk in client.chat.completions.create(**body, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            texts.append(delta.content)
        elif delta.tool_calls and delta.tool_calls[0].function and delta.tool_calls[0].function.arguments:
            texts.append(delta.tool_calls[0].function.arguments)
    return texts


def raw_deltas(sim: Simulator, body: dict[str, Any]) -> tuple[list[str], StreamState]:
    async def read() -> tuple[list[str], StreamState]:
        client = make_client(Settings(), sim.base_url)  # the worker's own client
        texts: list[str] = []
        async with stream_deltas(client, body) as (state, batches):
            async for batch in batches:
                texts.extend(batch)
        await client.close()
        return texts, state

    return asyncio.run(read())


@pytest.fixture(scope="module")
def body() -> dict[str, Any]:
    return prompt.chat_request(example.example_request(), "rankstream-sim")


class TestRawReadingMatchesTheSDK:
    def test_content_deltas(self, sim: Simulator, body: dict[str, Any]) -> None:
        raw, state = raw_deltas(sim, body)
        assert raw == sdk_deltas(sim, body)
        assert len(raw) > 20
        assert state.completed and state.finish_reason == "stop"
        assert state.usage is not None and state.usage.completion_tokens > 0

    def test_tool_call_argument_deltas(self, sim: Simulator, body: dict[str, Any]) -> None:
        tools_body = {k: v for k, v in body.items() if k != "response_format"}
        tools_body |= {
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "rank_products"}},
        }
        raw, state = raw_deltas(sim, tools_body)
        assert raw == sdk_deltas(sim, tools_body)
        assert '"recommendations"' in "".join(raw)
        assert state.finish_reason == "tool_calls"


def sse(events: list[str]) -> bytes:
    return b"".join(f"data: {e}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def split(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    previous = 0
    for cut in sorted(set(cuts)):
        yield data[previous:cut]
        previous = cut
    yield data[previous:]


class TestSSEDecoder:
    @given(
        st.lists(
            st.text(
                alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30
            ),
            min_size=1,
        ),
        st.lists(st.integers(min_value=0, max_value=2000)),
    )
    @settings(max_examples=200, deadline=None)
    def test_any_split_of_the_bytes_gives_the_same_payloads(self, events: list[str], cuts: list[int]) -> None:
        data = sse(events)
        decoder = SSEDecoder()
        payloads = [
            p for piece in split(data, [c % (len(data) + 1) for c in cuts]) for _, p in decoder.feed(piece)
        ]
        assert payloads == [e.encode() for e in events] + [b"[DONE]"]

    def test_crlf_comments_and_multiline_data(self) -> None:
        decoder = SSEDecoder()
        data = b': keep-alive\r\n\r\nevent: x\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata:[DONE]\n\n'
        assert list(decoder.feed(data)) == [(b"x", b'{"a":\n1}'), (None, b"[DONE]")]

    @pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
    @given(cuts=st.lists(st.integers(min_value=0, max_value=200)))
    @settings(max_examples=50, deadline=None)
    def test_every_line_ending_in_any_pieces_gives_the_same_events(self, end: bytes, cuts: list[int]) -> None:
        data = end.join([b"data: a", b"", b": ping", b"data: b", b"data: c", b"", b"data: [DONE]", b"", b""])
        decoder = SSEDecoder()
        pieces = split(data, [c % (len(data) + 1) for c in cuts])
        assert [p for piece in pieces for _, p in decoder.feed(piece)] == [b"a", b"b\nc", b"[DONE]"]

    def test_an_error_event_and_an_error_line_are_named_error(self) -> None:
        decoder = SSEDecoder()
        data = b'event: error\ndata: {"message":"x"}\n\nerror: {"code":500}\n\ndata: next\n\n'
        assert list(decoder.feed(data)) == [
            (b"error", b'{"message":"x"}'),
            (b"error", b'{"code":500}'),
            (None, b"next"),
        ]


def chunk(delta: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"id": "c", "choices": [{"index": 0, "delta": delta, **extra}]}).encode()


class TestPickingTheText:
    """The fast path reads only the delta's string; anything else is parsed in full."""

    @pytest.mark.parametrize(
        "payload,text",
        [
            (
                chunk({"content": 'a "quoted" \\ \u00e9 \U0001f600 {]'}),
                'a "quoted" \\ \u00e9 \U0001f600 {]',
            ),
            (b'{"choices":[{"delta":{"content" : "spaced"}}]}', "spaced"),
            (
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"product_id'}}]}),
                '{"product_id',
            ),
            (chunk({"role": "assistant", "content": ""}), ""),
            (chunk({"content": None, "refusal": None}), ""),
        ],
    )
    def test_text_of_a_chunk(self, payload: bytes, text: str) -> None:
        assert payload_text(payload, StreamState(requested_at=0)) == text

    def test_finish_reason_and_usage_are_noted_even_beside_text(self) -> None:
        state = StreamState(requested_at=0)
        assert payload_text(chunk({"content": "]}"}, finish_reason="stop"), state) == "]}"
        payload_text(
            b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}', state
        )
        assert state.finish_reason == "stop"
        assert state.usage is not None and state.usage.total_tokens == 7

    def test_an_error_inside_the_stream_raises(self) -> None:
        with pytest.raises(LLMStreamError):
            payload_text(
                b'{"error":{"message":"overloaded","type":"server_error"}}', StreamState(requested_at=0)
            )
