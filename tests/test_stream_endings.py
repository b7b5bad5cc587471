"""How a stream ends is told truly, on both ways of sending the LLM call, whatever the server's framing.

An answer is complete only with a finish_reason or `[DONE]`; an error anywhere in the stream
(`error:` line, `event: error`, an error object) fails the attempt, and the retry continues the
ranking; what the connection does after `[DONE]` spoils nothing; every framing a server may use
gives the same items. The simulator plays each server's behaviour (rankstream/simulator/wire.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import (
    Simulator,
    WorkerProcess,
    assert_complete_ranking,
    items,
    make_settings,
    ranked_with_fault,
)

from rankstream.settings import Settings

ERROR_FORMS = ["no_done", "error_line", "error_event", "error_object"]
FRAMINGS = ["framing_keepalive", "framing_crlf", "framing_cr"]


@pytest.fixture(scope="module", params=["hand-written", "sdk"])
def llm_http(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def ending_settings(redis_url: str, llm_http: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture(scope="module")
def ending_worker(ending_settings: Settings, sim: Simulator, llm_http: str) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        ending_settings,
        sim,
        RANKSTREAM_LLM_HTTP=llm_http,
        RANKSTREAM_IDLE_TIMEOUT="1",
        RANKSTREAM_MAX_ATTEMPTS="3",
    )
    yield process
    process.stop()


@pytest.fixture
def run(
    ending_worker: WorkerProcess, ending_settings: Settings, sim: Simulator, connection: redis.Redis
) -> Iterator[Any]:
    yield functools.partial(ranked_with_fault, sim, ending_settings, connection)
    sim.fault("none")


def attempts(stream: list[dict[str, Any]]) -> list[int]:
    return [e["attempt"] for e in stream if e["type"] == "started"]


class TestAStreamThatEndsBadlyIsAFailedAttempt:
    @pytest.mark.parametrize("fault", ERROR_FORMS)
    def test_the_retry_continues_the_ranking(self, run: Any, fault: str) -> None:
        stream = run(fault)

        assert attempts(stream) == [1, 2]
        retry_at = [n for n, e in enumerate(stream) if e["type"] == "started"][1]
        assert items(stream[:retry_at]), "nothing was published before the bad ending"
        assert all(i["source"] == "llm" for i in items(stream))  # not filled in from the catalogue
        assert stream[-1]["rejected"]["duplicate"] == 0
        assert_complete_ranking(stream)

    @pytest.mark.parametrize("fault", ERROR_FORMS)
    def test_when_it_persists_the_job_ends_llm_unavailable(self, run: Any, fault: str) -> None:
        stream = run(fault, None)

        assert attempts(stream) == [1, 2, 3]
        error = stream[-1]
        assert (error["type"], error["code"], error["retryable"]) == ("error", "llm_unavailable", True)

    def test_the_error_event_tells_the_page_no_provider_internals(self, run: Any) -> None:
        message = run("error_line", None)[-1]["message"]

        assert "reported an error in its stream" in message and "server_error" in message
        assert "/srv/" not in message and "llama_decode" not in message


class TestAWholeAnswerIsWhole:
    def test_a_connection_broken_after_done_spoils_nothing(self, run: Any) -> None:
        stream = run("broken_after_done")

        assert attempts(stream) == [1]
        assert all(i["source"] == "llm" for i in items(stream))
        assert_complete_ranking(stream)

    @pytest.mark.parametrize("framing", FRAMINGS)
    def test_every_framing_gives_the_same_items_as_clean_framing(self, run: Any, framing: str) -> None:
        clean, framed = run("none"), run(framing)

        assert attempts(framed) == [1]
        assert [(i["rank"], i["product_id"], i["source"]) for i in items(framed)] == [
            (i["rank"], i["product_id"], i["source"]) for i in items(clean)
        ]
        assert framed[-1]["rejected"] == clean[-1]["rejected"]


class TestUsageYouCanTrust:
    def test_a_server_that_reports_usage_is_taken_at_its_word(self, run: Any) -> None:
        usage = run("none")[-1]["usage"]

        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["estimated"] == [] and usage["estimate"] is None

    def test_a_server_that_reports_none_gets_an_estimate_that_says_so(self, run: Any) -> None:
        reported, estimated = run("none")[-1]["usage"], run("no_usage")[-1]["usage"]

        assert estimated["estimated"] == ["completion_tokens", "prompt_tokens"]
        assert "characters per token" in estimated["estimate"]
        for kind in ("prompt_tokens", "completion_tokens"):  # the same order of size as the truth
            assert reported[kind] / 3 < estimated[kind] < reported[kind] * 3, kind

    def test_a_retried_job_sums_every_attempt_and_marks_the_cut_one_estimated(self, run: Any) -> None:
        clean, retried = run("none")[-1]["usage"], run("no_done")[-1]["usage"]

        assert retried["estimated"] == ["completion_tokens", "prompt_tokens"]  # the cut attempt's
        # two prompts (the second for the candidates left), more than one
        assert retried["prompt_tokens"] > clean["prompt_tokens"]
        assert retried["total_tokens"] == retried["prompt_tokens"] + retried["completion_tokens"]
