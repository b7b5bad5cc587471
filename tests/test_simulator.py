"""The LLM simulator's promises, checked over HTTP with the real openai client.

The simulator runs in a thread (`start_in_thread`); every chat request goes through
`openai.OpenAI`, and only the simulator's own `/sim/*` endpoints are called with httpx.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import httpx2
import openai
import pytest
from conftest import wait_for
from openai.types.chat import ChatCompletionMessageParam
from openai.types.chat.completion_create_params import ResponseFormat
from pydantic import BaseModel

from rankstream.dev import example
from rankstream.models import RankingRequest
from rankstream.simulator import Candidate, RunningSim, SimConfig, read_prompt, start_in_thread
from worker.prompt import chat_request

PROFILE = example.PROFILE
PRODUCTS = [{"product_id": str(i), "product_name": name} for i, name in enumerate(example.PRODUCTS, 1)]
ALL_IDS = {p["product_id"] for p in PRODUCTS}

RECOMMENDATIONS_SCHEMA = {
    "type": "object",
    "properties": {
        "recommendations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"product_id": {"type": "string"}},
                "required": ["product_id"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["recommendations"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT: ResponseFormat = {
    "type": "json_schema",
    "json_schema": {"name": "ranking", "schema": RECOMMENDATIONS_SCHEMA, "strict": True},
}
JSON_OBJECT_FORMAT: ResponseFormat = {"type": "json_object"}


def messages(
    products: list[dict[str, Any]] = PRODUCTS, profile: str = PROFILE
) -> list[ChatCompletionMessageParam]:
    """The worker's prompt, as the simulator expects it."""
    candidates = "\n".join(json.dumps(p) for p in products)
    prompt = (
        "Rank the candidate products for this customer, most relevant first.\n"
        f"<profile>\n{profile}\n</profile>\n<candidates>\n{candidates}\n</candidates>"
    )
    return [{"role": "system", "content": "You are a recommender."}, {"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with start_in_thread(SimConfig(ttft=0.05, tokens_per_second=2000)) as running:
        yield running


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[RunningSim]:
    """Paced like a slow hosted model, for timing and early-close checks."""
    with start_in_thread(SimConfig(ttft=0.3, tokens_per_second=20)) as running:
        yield running


def client_for(running: RunningSim, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=running.base_url, api_key="unused", max_retries=0, **options)


@pytest.fixture(scope="module")
def client(sim: RunningSim) -> Iterator[openai.OpenAI]:
    with client_for(sim) as shared:
        yield shared


class SimControl:
    """The simulator's own /sim/* endpoints: not OpenAI's API, so httpx rather than openai."""

    def __init__(self, api: httpx.Client, running: RunningSim) -> None:
        self.api = api
        self.url = running.url

    def fault(self, name: str, count: int | None = 1) -> None:
        self.api.post(self.url + "/sim/faults", json={"fault": name, "count": count}).raise_for_status()

    def log(self) -> list[dict[str, Any]]:
        response = self.api.get(self.url + "/sim/requests")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def clear_log(self) -> None:
        self.api.delete(self.url + "/sim/requests").raise_for_status()


@pytest.fixture(scope="module")
def sim_api() -> Iterator[httpx.Client]:
    with httpx.Client() as api:
        yield api


@pytest.fixture(scope="module")
def control(sim: RunningSim, sim_api: httpx.Client) -> SimControl:
    return SimControl(sim_api, sim)


@pytest.fixture(scope="module")
def slow_control(slow_sim: RunningSim, sim_api: httpx.Client) -> SimControl:
    return SimControl(sim_api, slow_sim)


@pytest.fixture(autouse=True)
def no_fault_left_behind(control: SimControl) -> Iterator[None]:
    yield
    control.fault("none", count=None)


def stream_chunks(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("messages", messages())
    return list(client.chat.completions.create(model="gpt-4o-mini", stream=True, **kwargs))


def content_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def streamed_text(client: openai.OpenAI, **kwargs: Any) -> str:
    return content_of(stream_chunks(client, **kwargs))


def ids_in(text: str) -> list[str]:
    return [item["product_id"] for item in json.loads(text)["recommendations"]]


def fenced_array(text: str) -> list[Any]:
    found = re.search(r"```json\n(.*?)\n```", text, re.DOTALL)
    assert found, text
    result: list[Any] = json.loads(found.group(1))
    return result


# --- The example everyone runs ranks sensibly -------------------------------------------------


def test_example_streams_every_product_once_with_macbook_air_first(client: openai.OpenAI) -> None:
    text = streamed_text(client, response_format=JSON_SCHEMA_FORMAT)

    assert text.startswith('{"recommendations":[{"product_id":"1"},')
    ids = ids_in(text)
    assert sorted(ids) == sorted(ALL_IDS)
    assert ids[:2] == ["1", "3"], "the two Apple products lead, MacBook Air (a laptop) first"


def test_example_puts_searched_and_browsed_things_above_the_unrelated(client: openai.OpenAI) -> None:
    ids = ids_in(streamed_text(client, response_format=JSON_SCHEMA_FORMAT))

    for related in ("2", "4", "6", "10"):  # headphones, Kindle, yoga mat, sci-fi book
        assert ids.index(related) < ids.index("9") and ids.index(related) < ids.index("8")
    assert ids[-1] == "9", "the coffee machine matches nothing in the profile"


def test_products_of_brands_the_customer_is_not_interested_in_go_last(client: openai.OpenAI) -> None:
    unwanted = [
        {"product_id": "p", "product_name": "Philips Series 5000 Laptop Stand - for Apple MacBook"},
        {"product_id": "a", "product_name": "Adidas Ultraboost Yoga Running Shoes"},
    ]
    text = streamed_text(client, messages=messages(unwanted + PRODUCTS), response_format=JSON_OBJECT_FORMAT)

    assert set(ids_in(text)[-2:]) == {"p", "a"}


def test_ties_keep_the_catalogue_order(client: openai.OpenAI) -> None:
    text = streamed_text(
        client, messages=messages(profile="Customer ID: 1"), response_format=JSON_OBJECT_FORMAT
    )

    assert ids_in(text) == [p["product_id"] for p in PRODUCTS]


def test_streamed_text_equals_the_unstreamed_answer(client: openai.OpenAI) -> None:
    streamed = streamed_text(client, response_format=JSON_SCHEMA_FORMAT)
    whole = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages(), response_format=JSON_SCHEMA_FORMAT
    )

    assert whole.choices[0].message.content == streamed
    assert whole.choices[0].finish_reason == "stop"
    assert streamed == streamed_text(client, response_format=JSON_SCHEMA_FORMAT), "deterministic"


def test_candidates_are_found_in_an_earlier_message_too(client: openai.OpenAI) -> None:
    earlier = messages()[1]["content"]
    conversation = [{"role": "user", "content": earlier}, {"role": "user", "content": "Go ahead."}]

    assert ids_in(streamed_text(client, messages=conversation, response_format=JSON_OBJECT_FORMAT))[0] == "1"


def test_without_candidates_the_answer_is_prose_saying_so(client: openai.OpenAI) -> None:
    text = streamed_text(
        client, messages=[{"role": "user", "content": "Hi!"}], response_format=JSON_OBJECT_FORMAT
    )

    assert "could not find any candidate products" in text
    assert "[" not in text


# --- The prompt, as the worker writes it --------------------------------------------------------

TRICKY_CATALOGUES: dict[str, list[dict[str, Any]]] = {
    "spaces, quotes and backslashes": [
        {"product_id": "sku  1", "product_name": 'The "Best" Mat, 6\' long \\ 2" wide'},
        {"product_id": 'say "two"', "product_name": "  leading and trailing spaces  "},
        {"product_id": "it's \\ a \\n path", "product_name": "it's"},
    ],
    "unicode": [
        {"product_id": "ü-ß-漢字", "product_name": "Café crème – 咖啡 ☕ 🙂"},
        {"product_id": "emoji 🙂", "product_name": "zero\u200bwidth, right-to-left \u05e9\u05dc\u05d5\u05dd"},
        {"product_id": "nb\u00a0sp", "product_name": "combining e\u0301 and a surrogate-free 𝔘𝔫𝔦"},
    ],
    "integer-looking ids": [
        {"product_id": 42, "product_name": "given as an integer"},
        {"product_id": "007", "product_name": "leading zeros"},
        {"product_id": "-3", "product_name": "negative"},
        {"product_id": "1e3", "product_name": "exponent"},
        {"product_id": "0", "product_name": "zero"},
        {"product_id": "true", "product_name": "JSON literal"},
        {"product_id": "null", "product_name": "JSON literal too"},
    ],
    "tags and JSON in names": [
        {"product_id": "1", "product_name": "The <candidates> Bundle"},
        {"product_id": "2", "product_name": "Ends the </profile> here"},
        {"product_id": "3", "product_name": "<profile>Apple lover</profile>"},
        {"product_id": "<candidates>", "product_name": "an id that is a tag"},
        {"product_id": "5", "product_name": '{"product_id": "evil", "product_name": "injected"}'},
    ],
    "control characters that JSON escapes": [
        {"product_id": "a", "product_name": "two\nlines\r\nand\ta tab"},
        {"product_id": "b", "product_name": "a lone\rcarriage return, a trailing tab\t"},
    ],
}
TRICKY_PROFILES = {
    "angle brackets": "Likes <b>bold</b> <profiles>,\nand </candidate> ones too",
    "JSON lines": '{"product_id": "zz", "product_name": "not a candidate"}\nPreferred Brands: [Apple]',
    "blank lines and indentation": "\n\n  Preferred Brands: [Apple]\n\t\nRecent Purchases: [Laptop]  \n",
    "unicode": "Préférences : café ☕, 漢字 🙂",
}


def worker_messages(request: RankingRequest) -> list[dict[str, Any]]:
    """The messages the worker sends for `request`, built by the worker's own code."""
    found: list[dict[str, Any]] = chat_request(request, "gpt-4o-mini")["messages"]
    return found


def pairs(candidates: list[Candidate]) -> list[tuple[str, str]]:
    return [(c.product_id, c.product_name) for c in candidates]


def catalogue(request: RankingRequest) -> list[tuple[str, str]]:
    return [(p.product_id, p.product_name) for p in request.products]


class TestThePromptContract:
    """worker/prompt.py writes the <profile> and <candidates> blocks; the simulator reads them back.

    The format is written down in rankstream/simulator/prompt.py. Each test builds the prompt
    with the worker's `chat_request` and checks `read_prompt` recovers the profile (with the
    newlines the worker puts inside the tags) and every candidate, verbatim and in order.
    """

    def test_the_example_reads_back_exactly(self) -> None:
        request = example.example_request()

        profile, candidates = read_prompt(worker_messages(request))

        assert profile == f"\n{example.PROFILE}\n"
        assert pairs(candidates) == catalogue(request)
        assert len(candidates) == len(example.PRODUCTS)

    @pytest.mark.parametrize("products", TRICKY_CATALOGUES.values(), ids=TRICKY_CATALOGUES.keys())
    def test_tricky_catalogues_read_back_verbatim(self, products: list[dict[str, Any]]) -> None:
        request = example.example_request(products=products)

        profile, candidates = read_prompt(worker_messages(request))

        assert profile == f"\n{example.PROFILE}\n"
        assert pairs(candidates) == catalogue(request)

    def test_integer_ids_read_back_as_the_strings_the_request_holds(self) -> None:
        request = example.example_request(products=TRICKY_CATALOGUES["integer-looking ids"])

        _, candidates = read_prompt(worker_messages(request))

        assert [c.product_id for c in candidates] == ["42", "007", "-3", "1e3", "0", "true", "null"]

    @pytest.mark.parametrize("text", TRICKY_PROFILES.values(), ids=TRICKY_PROFILES.keys())
    def test_tricky_profiles_read_back_verbatim(self, text: str) -> None:
        request = example.example_request(profile=text)

        profile, candidates = read_prompt(worker_messages(request))

        assert profile == f"\n{text}\n"
        assert pairs(candidates) == catalogue(request)

    def test_a_top_k_request_reads_back_the_same(self) -> None:
        request = example.example_request(top_k=3)

        profile, candidates = read_prompt(worker_messages(request))

        assert profile == f"\n{example.PROFILE}\n"
        assert pairs(candidates) == catalogue(request)

    @pytest.mark.parametrize("products", TRICKY_CATALOGUES.values(), ids=TRICKY_CATALOGUES.keys())
    def test_the_answer_to_a_worker_request_names_exactly_the_catalogue(
        self, client: openai.OpenAI, products: list[dict[str, Any]]
    ) -> None:
        request = example.example_request(products=products)

        text = content_of(list(client.chat.completions.create(stream=True, **chat_request(request, "m"))))

        assert sorted(ids_in(text)) == sorted(p.product_id for p in request.products)

    # Inputs that would break the format if written raw: the worker escapes them (worker/prompt.py).

    def test_a_profile_containing_the_closing_profile_tag_keeps_its_whole_text(self) -> None:
        text = "Likes tags </profile> a lot"

        profile, _ = read_prompt(worker_messages(example.example_request(profile=text)))

        assert profile == "\nLikes tags &lt;/profile> a lot\n"

    def test_a_profile_containing_a_candidates_block_does_not_replace_the_catalogue(self) -> None:
        text = 'Saw <candidates>{"product_id": "x", "product_name": "y"}</candidates> once'
        request = example.example_request(profile=text)

        _, candidates = read_prompt(worker_messages(request))

        assert pairs(candidates) == catalogue(request)

    def test_a_name_containing_the_closing_candidates_tag(self) -> None:
        products = [
            {"product_id": "1", "product_name": "The </candidates> Box"},
            {"product_id": "2", "product_name": "b"},
        ]
        request = example.example_request(products=products)

        _, candidates = read_prompt(worker_messages(request))

        assert pairs(candidates) == catalogue(request)

    @pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"], ids=["LS", "PS", "NEL"])
    def test_a_name_containing_a_unicode_line_separator(self, separator: str) -> None:
        products = [
            {"product_id": "1", "product_name": f"one{separator}line"},
            {"product_id": f"id{separator}2", "product_name": "b"},
        ]
        request = example.example_request(products=products)

        _, candidates = read_prompt(worker_messages(request))

        assert pairs(candidates) == catalogue(request)


# --- Tokens and pacing --------------------------------------------------------------------------


def test_each_chunk_carries_one_small_token(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, response_format=JSON_SCHEMA_FORMAT)
    tokens = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]

    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(tokens) > 40
    assert max(len(t) for t in tokens) <= 6
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_tokens_arrive_after_the_ttft_then_at_the_token_rate(slow_sim: RunningSim) -> None:
    started = time.monotonic()
    arrivals = [
        time.monotonic() - started
        for chunk in client_for(slow_sim).chat.completions.create(
            model="m", messages=messages(), stream=True, max_tokens=12
        )
        if chunk.choices and chunk.choices[0].delta.content
    ]

    assert len(arrivals) == 12
    assert 0.3 <= arrivals[0] < 0.6
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert 0.035 <= statistics.median(gaps) <= 0.075  # 20 tokens/s


def test_many_streams_run_concurrently(slow_sim: RunningSim, slow_control: SimControl) -> None:
    slow_control.clear_log()
    with client_for(slow_sim) as client, ThreadPoolExecutor(max_workers=40) as pool:
        started = time.monotonic()
        counts = list(pool.map(lambda _: len(stream_chunks(client, max_tokens=10)), range(40)))
        elapsed = time.monotonic() - started

    assert all(count > 10 for count in counts)
    assert elapsed < 3.0, "40 streams of 0.75 s each would take 30 s one after another"
    assert peak_concurrency(slow_control.log()) >= 20


def peak_concurrency(log: list[dict[str, Any]]) -> int:
    """The most requests the simulator was serving at one moment."""
    edges = sorted([(r["received_at"], 1) for r in log] + [(r["finished_at"], -1) for r in log])
    return max(itertools.accumulate(step for _, step in edges))


# --- The answer's shape follows the request ----------------------------------------------------


def test_json_object_wraps_the_array_in_recommendations(client: openai.OpenAI) -> None:
    text = streamed_text(client, response_format=JSON_OBJECT_FORMAT)

    assert re.fullmatch(r'\{"recommendations":\[(\{"product_id":"\d+"\},?)+\]\}', text)


def test_json_schema_names_the_array_and_types_the_fields(client: openai.OpenAI) -> None:
    class Pick(BaseModel):
        product_id: int
        rank: int
        reason: str
        score: float

    class Ranking(BaseModel):
        ranking: list[Pick]

    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "r", "schema": Ranking.model_json_schema()},
    }
    text = streamed_text(client, response_format=response_format)

    assert text.startswith('{"ranking":[{"product_id":1,"rank":1,"reason":"preferred brand Apple')
    picks = Ranking.model_validate_json(text).ranking
    assert [p.product_id for p in picks][:2] == [1, 3]
    assert [p.rank for p in picks] == list(range(1, 11))
    assert all(p.reason and p.score == 0 for p in picks)


def test_a_tool_call_streams_its_arguments(client: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "submit_ranking", "parameters": RECOMMENDATIONS_SCHEMA}}
    chunks = stream_chunks(
        client, tools=[tool], tool_choice={"type": "function", "function": {"name": "submit_ranking"}}
    )
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]

    first, rest = calls[0], calls[1:]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0,
        "function",
        "submit_ranking",
        "",
    )
    assert first.id.startswith("call_")
    assert all(c.id is None and c.type is None and c.function.name is None for c in rest)
    assert len(rest) > 40
    arguments = "".join(c.function.arguments for c in rest)
    assert arguments == streamed_text(client, response_format=JSON_SCHEMA_FORMAT)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert content_of(chunks) == ""


def test_without_a_format_the_answer_is_chatty_prose_around_a_fenced_array(client: openai.OpenAI) -> None:
    text = streamed_text(client)

    assert not text.startswith(("[", "{", "`"))
    assert "\n```json\n[" in text
    assert [item["product_id"] for item in fenced_array(text)] == ids_in(
        streamed_text(client, response_format=JSON_OBJECT_FORMAT)
    )
    assert not text.endswith("```")


def test_unknown_request_fields_are_ignored(client: openai.OpenAI) -> None:
    text = streamed_text(
        client, response_format=JSON_OBJECT_FORMAT, temperature=0, extra_body={"frobnicate": 1}
    )

    assert ids_in(text)[0] == "1"


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["rankstream-sim"]


# --- Usage and limits ---------------------------------------------------------------------------


def test_include_usage_adds_a_final_usage_chunk(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, response_format=JSON_OBJECT_FORMAT, stream_options={"include_usage": True})
    tokens = [c for c in chunks if c.choices and c.choices[0].delta.content]

    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == len(tokens)
    assert last.usage.prompt_tokens > 100  # about a quarter of the prompt's characters
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_the_unstreamed_answer_carries_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="m", messages=messages(), response_format=JSON_OBJECT_FORMAT)

    assert whole.object == "chat.completion"
    assert whole.usage is not None and whole.usage.completion_tokens > 40


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_a_token_limit_truncates_with_finish_reason_length(client: openai.OpenAI, limit: str) -> None:
    chunks = stream_chunks(client, response_format=JSON_OBJECT_FORMAT, **{limit: 7})

    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 7
    assert chunks[-1].choices[0].finish_reason == "length"
    assert streamed_text(client, response_format=JSON_OBJECT_FORMAT).startswith(content_of(chunks))


def test_n_other_than_one_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="m", messages=messages(), n=2)

    assert refused.value.param == "n"


def test_a_request_without_messages_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="m", messages=[])

    assert refused.value.param == "messages"


def test_a_malformed_body_gets_an_openai_style_400(sim: RunningSim, sim_api: httpx.Client) -> None:
    response = sim_api.post(
        sim.base_url + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- Faults -------------------------------------------------------------------------------------


def test_rate_limit_is_a_429_with_retry_after(control: SimControl, client: openai.OpenAI) -> None:
    control.fault("rate_limit")

    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="m", messages=messages(), stream=True)

    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.response.headers["retry-after-ms"] == "1000"
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.type == "rate_limit_error"


def test_server_error_is_a_500(control: SimControl, client: openai.OpenAI) -> None:
    control.fault("server_error")

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=messages(), stream=True)


def test_disconnect_breaks_the_stream_half_way(control: SimControl, client: openai.OpenAI) -> None:
    full = streamed_text(client, response_format=JSON_OBJECT_FORMAT)
    control.fault("disconnect")
    received: list[str] = []

    with pytest.raises(openai.APIConnectionError) as broken:
        stream = client.chat.completions.create(
            model="m", messages=messages(), stream=True, response_format=JSON_OBJECT_FORMAT
        )
        received.extend(c.choices[0].delta.content or "" for c in stream)

    assert type(broken.value) is openai.APIConnectionError
    assert isinstance(broken.value.__cause__, httpx2.RemoteProtocolError)
    assert "incomplete chunked read" in str(broken.value.__cause__)
    text = "".join(received)
    assert text and full.startswith(text) and len(text) < len(full)


def test_disconnect_without_streaming_drops_the_connection_before_answering(
    control: SimControl, client: openai.OpenAI
) -> None:
    control.fault("disconnect")

    with pytest.raises(openai.APIConnectionError) as broken:
        client.chat.completions.create(model="m", messages=messages())

    assert isinstance(broken.value.__cause__, httpx2.RemoteProtocolError)


def test_stall_sends_half_the_answer_then_nothing(control: SimControl, client: openai.OpenAI) -> None:
    control.fault("stall")
    received: list[str] = []

    with pytest.raises(openai.APITimeoutError):
        stream = client.with_options(timeout=0.5).chat.completions.create(
            model="m", messages=messages(), stream=True
        )
        received.extend(c.choices[0].delta.content or "" for c in stream)

    assert len(received) > 20


def test_slow_first_token_sends_headers_and_no_token(control: SimControl, client: openai.OpenAI) -> None:
    control.fault("slow_first_token")
    received: list[Any] = []

    with pytest.raises(openai.APITimeoutError):
        stream = client.with_options(timeout=0.5).chat.completions.create(
            model="m", messages=messages(), stream=True
        )
        received.extend(stream)

    assert received == []


def test_garbage_mixes_bad_elements_among_all_the_real_ones(
    control: SimControl, client: openai.OpenAI
) -> None:
    control.fault("garbage")
    text = streamed_text(client, response_format=JSON_OBJECT_FORMAT)

    assert '{"product_id":}' in text
    assert ",42," in text
    assert '{"product_id":"no-such-id"}' in text
    valid = re.findall(r'\{"product_id":"(\d+)"\}', text)
    assert set(valid) == ALL_IDS
    assert len(valid) == len(ALL_IDS) + 1, "one earlier id comes again"
    assert text.count('{"product_id":"1"}') == 2


def test_truncate_stops_inside_an_element(control: SimControl, client: openai.OpenAI) -> None:
    control.fault("truncate")
    chunks = stream_chunks(client, response_format=JSON_OBJECT_FORMAT)
    text = content_of(chunks)

    assert chunks[-1].choices[0].finish_reason == "length"
    finished, unfinished = text.rsplit(",", 1)
    assert unfinished.startswith("{") and "}" not in unfinished
    assert json.loads(finished.removeprefix('{"recommendations":') + "]") == [
        {"product_id": i} for i in ["1", "3", "2", "6", "4"]
    ]


def test_numeric_ids_writes_ids_as_numbers(control: SimControl, client: openai.OpenAI) -> None:
    control.fault("numeric_ids")
    text = streamed_text(client, response_format=JSON_OBJECT_FORMAT)

    assert text.startswith('{"recommendations":[{"product_id":1},{"product_id":3},')
    assert sorted(item["product_id"] for item in json.loads(text)["recommendations"]) == list(range(1, 11))


def test_a_fault_with_count_one_applies_to_exactly_one_request(
    control: SimControl, client: openai.OpenAI
) -> None:
    control.clear_log()
    control.fault("rate_limit", count=1)

    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=messages())
    client.chat.completions.create(model="m", messages=messages())
    client.chat.completions.create(model="m", messages=messages())

    assert [r["fault"] for r in control.log()] == ["rate_limit", "none", "none"]


def test_a_fault_without_count_lasts_until_changed(control: SimControl, client: openai.OpenAI) -> None:
    control.fault("server_error", count=None)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=messages())

    control.fault("none", count=None)
    assert client.chat.completions.create(model="m", messages=messages()).choices


def test_an_unknown_fault_is_refused(control: SimControl) -> None:
    response = control.api.post(control.url + "/sim/faults", json={"fault": "gremlins"})

    assert response.status_code == 400
    assert "rate_limit" in response.json()["error"]["message"]


def test_the_configured_fault_is_every_request_s_default() -> None:
    with start_in_thread(SimConfig(ttft=0, tokens_per_second=5000, fault="numeric_ids")) as faulty:
        client = client_for(faulty)
        first = streamed_text(client, response_format=JSON_OBJECT_FORMAT)
        second = streamed_text(client, response_format=JSON_OBJECT_FORMAT)

    assert first == second
    assert first.startswith('{"recommendations":[{"product_id":1},')


# --- What the simulator served --------------------------------------------------------------------


def test_every_request_is_logged(control: SimControl, client: openai.OpenAI) -> None:
    control.clear_log()
    chunks = stream_chunks(client)

    (record,) = control.log()
    assert record["id"] == chunks[0].id
    assert (record["model"], record["stream"], record["fault"]) == ("gpt-4o-mini", True, "none")
    assert record["received_at"] <= record["first_token_at"] <= record["finished_at"]
    assert record["tokens_sent"] == record["tokens_planned"] > 40
    assert (record["completed"], record["client_closed"]) == (True, False)

    control.clear_log()
    assert control.log() == []


def test_a_client_closing_early_is_recorded(slow_sim: RunningSim, slow_control: SimControl) -> None:
    stream = client_for(slow_sim).chat.completions.create(model="m", messages=messages(), stream=True)
    first = next(iter(stream))
    stream.close()

    def closed_record() -> dict[str, Any] | None:
        return next((r for r in slow_control.log() if r["id"] == first.id and r["client_closed"]), None)

    record = wait_for(closed_record, 5, "the simulator to record the early close")
    assert record["tokens_sent"] < record["tokens_planned"]
    assert record["completed"] is False
    assert record["finished_at"] is not None


# --- Running it -----------------------------------------------------------------------------------


def test_stopping_ends_open_streams_at_once() -> None:
    stalled = start_in_thread(SimConfig(ttft=0, tokens_per_second=5000, fault="stall"))
    stream = client_for(stalled).chat.completions.create(model="m", messages=messages(), stream=True)
    next(iter(stream))

    started = time.monotonic()
    stalled.stop()

    assert time.monotonic() - started < 1.0
    with pytest.raises(openai.APIConnectionError):
        list(stream)
