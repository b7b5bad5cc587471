"""A response format every server accepts: json_schema first, the next form when it is refused, remembered.

The simulator refuses forms as servers lacking them do (llama-cpp-python answers json_schema
with a 500 naming response_format); each form is tested with the ones before it refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
import redis
from conftest import Simulator, WorkerProcess, assert_complete_ranking, finished_stream, make_settings

from producer import enqueue
from rankstream.codes import ResponseFormat
from rankstream.dev import example
from worker import prompt
from worker.formats import FormatMemory, refused

ORDER = ["json_schema", "json_object", "tools", "text"]


@pytest.fixture
def refusing_sim(sim: Simulator) -> Iterator[Simulator]:
    yield sim
    sim.refuse()


def ranked(
    sim: Simulator, worker: WorkerProcess, connection: redis.Redis
) -> tuple[list[dict[str, Any]], list[str]]:
    """One example ranking through `worker`: its stream, and the forms of the LLM requests it made."""
    before = len(sim.requests())
    handle = enqueue(example.example_request(), settings=worker.settings)
    stream = finished_stream(connection, handle.job_id)
    return stream, [r["form"] for r in sim.requests()[before:]]


def metric(worker: WorkerProcess, line_start: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
    return float(next(line for line in text.splitlines() if line.startswith(line_start)).split()[-1])


@pytest.mark.parametrize("refused_count", [1, 2, 3])
def test_each_form_is_reached_when_the_ones_before_it_are_refused_and_then_remembered(
    refusing_sim: Simulator, redis_url: str, connection: redis.Redis, refused_count: int
) -> None:
    refusing_sim.refuse(*ORDER[:refused_count])
    worker = WorkerProcess(make_settings(redis_url), refusing_sim)
    try:
        first, first_forms = ranked(refusing_sim, worker, connection)
        second, second_forms = ranked(refusing_sim, worker, connection)
        fallbacks = metric(worker, 'rankstream_llm_retries_total{cause="response_format"}')
    finally:
        worker.stop()

    assert first_forms == ORDER[: refused_count + 1]
    assert second_forms == [ORDER[refused_count]]  # straight to the form that works
    for stream in (first, second):
        assert [e["attempt"] for e in stream if e["type"] == "started"] == [1]  # no attempt spent
        assert all(e["source"] == "llm" for e in stream if e["type"] == "item")
        assert_complete_ranking(stream)
    assert fallbacks == refused_count


def test_a_named_form_is_used_as_it_is(
    refusing_sim: Simulator, redis_url: str, connection: redis.Redis
) -> None:
    refusing_sim.refuse("json_schema")
    worker = WorkerProcess(make_settings(redis_url), refusing_sim, RANKSTREAM_RESPONSE_FORMAT="json_object")
    try:
        stream, forms = ranked(refusing_sim, worker, connection)
    finally:
        worker.stop()

    assert forms == ["json_object"]
    assert_complete_ranking(stream)


def test_a_named_form_that_is_refused_is_not_swapped_for_another(
    refusing_sim: Simulator, redis_url: str, connection: redis.Redis
) -> None:
    refusing_sim.refuse("json_object")
    worker = WorkerProcess(
        make_settings(redis_url),
        refusing_sim,
        RANKSTREAM_RESPONSE_FORMAT="json_object",
        RANKSTREAM_MAX_ATTEMPTS="1",
    )
    try:
        stream, forms = ranked(refusing_sim, worker, connection)
    finally:
        worker.stop()

    assert forms == ["json_object"]
    assert stream[-1]["type"] == "error" and stream[-1]["code"] == "llm_unavailable"


class TestTheChatRequestOfEachForm:
    request = example.example_request()

    def test_json_schema_carries_the_strict_schema(self) -> None:
        chat = prompt.chat_request(self.request, "m", ResponseFormat.JSON_SCHEMA)
        assert chat["response_format"]["type"] == "json_schema" and "tools" not in chat

    def test_json_object_and_text_carry_the_schema_in_the_prompt(self) -> None:
        for form, fmt in ((ResponseFormat.JSON_OBJECT, {"type": "json_object"}), (ResponseFormat.TEXT, None)):
            chat = prompt.chat_request(self.request, "m", form)
            assert chat.get("response_format") == fmt
            assert '"recommendations"' in chat["messages"][0]["content"]
            assert '"enum":["1","2","3","4","5","6","7","8","9","10"]' in chat["messages"][0]["content"]

    def test_tools_names_the_one_function_to_call(self) -> None:
        chat = prompt.chat_request(self.request, "m", ResponseFormat.TOOLS)
        assert chat["tool_choice"] == {"type": "function", "function": {"name": prompt.TOOL_NAME}}
        assert chat["tools"][0]["function"]["parameters"] == prompt.answer_schema(self.request)
        assert "response_format" not in chat


def status_error(status: int, body: object) -> openai.APIStatusError:
    response = httpx2.Response(status, request=httpx2.Request("POST", "http://llm/v1/chat/completions"))
    return openai.APIStatusError(f"Error code: {status}", response=response, body=body)


class TestWhatCountsAsARefusal:
    @pytest.mark.parametrize(
        ("status", "body", "form", "expected"),
        [
            (
                500,
                {"message": "response_format.type Input should be 'text' or 'json_object'"},
                "json_schema",
                True,
            ),
            (400, {"message": "Unsupported parameter: 'response_format'"}, "json_schema", True),
            (400, {"message": "guided decoding is not enabled"}, "json_schema", True),
            (400, {"message": "json_object is not supported"}, "json_object", True),
            (500, {"message": "tools param requires --jinja flag"}, "tools", True),
            (500, {"message": "CUDA out of memory"}, "json_schema", False),  # the server's own trouble
            (429, {"message": "response_format rate limited"}, "json_schema", False),
            (400, {"message": "tools are not supported"}, "json_schema", False),  # not this form
        ],
    )
    def test_a_refusal_names_the_form(self, status: int, body: object, form: str, expected: bool) -> None:
        assert refused(status_error(status, body), ResponseFormat(form)) is expected


class TestTheMemory:
    def test_auto_moves_each_model_and_url_on_by_itself(self) -> None:
        memory = FormatMemory(ResponseFormat.AUTO)
        assert memory.fall_back("m", "u", ResponseFormat.JSON_SCHEMA) is ResponseFormat.JSON_OBJECT
        assert memory.form("m", "u") is ResponseFormat.JSON_OBJECT
        assert memory.form("m", "other") is ResponseFormat.JSON_SCHEMA
        assert memory.form("other", "u") is ResponseFormat.JSON_SCHEMA

    def test_two_jobs_refused_at_once_move_it_on_once(self) -> None:
        memory = FormatMemory(ResponseFormat.AUTO)
        memory.fall_back("m", "u", ResponseFormat.JSON_SCHEMA)
        assert memory.fall_back("m", "u", ResponseFormat.JSON_SCHEMA) is ResponseFormat.JSON_OBJECT

    def test_text_is_the_last_form(self) -> None:
        memory = FormatMemory(ResponseFormat.AUTO)
        assert memory.fall_back("m", "u", ResponseFormat.TEXT) is None

    def test_a_named_form_never_falls_back(self) -> None:
        memory = FormatMemory(ResponseFormat.JSON_SCHEMA)
        assert memory.fall_back("m", "u", ResponseFormat.JSON_SCHEMA) is None
        assert memory.form("m", "u") is ResponseFormat.JSON_SCHEMA
