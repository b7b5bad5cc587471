"""The worker's /metrics: the names DESIGN.md fixes, labelled counters from zero, real readings."""

from __future__ import annotations

import httpx
import redis
from conftest import WorkerProcess, finished_stream, wait_for
from prometheus_client.parser import text_string_to_metric_families

from producer import enqueue
from rankstream.dev import example
from rankstream.settings import Settings

HISTOGRAMS = [
    "rankstream_time_to_first_item_seconds",
    "rankstream_llm_time_to_first_item_seconds",
    "rankstream_queue_wait_seconds",
    "rankstream_llm_time_to_first_token_seconds",
    "rankstream_publish_latency_seconds",
    "rankstream_item_gap_seconds",
    "rankstream_job_duration_seconds",
]
LABELLED = {
    "rankstream_jobs_total": (
        "outcome",
        {"done", "llm_unavailable", "no_items", "timeout", "cancelled", "worker_lost"},
    ),
    "rankstream_items_rejected_total": ("reason", {"invalid", "truncated", "unknown_id", "duplicate"}),
    "rankstream_llm_retries_total": ("cause", {"rate_limit", "server_error", "timeout", "connection"}),
    "rankstream_llm_tokens_total": ("kind", {"prompt", "completion"}),
}
ALSO_LABELLED = {"rankstream_llm_tokens_total": ("counted", {"reported", "estimated"})}


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(worker: WorkerProcess) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for ls, v in samples[name] if all(ls.get(k) == x for k, x in labels.items()))


def test_every_contract_metric_is_exposed_and_labelled_counters_start_at_zero(worker: WorkerProcess) -> None:
    samples = scrape(worker)

    for name in HISTOGRAMS:
        assert f"{name}_bucket" in samples and f"{name}_count" in samples, name
    for name in ("rankstream_items_published_total", "rankstream_jobs_in_progress"):
        assert name in samples, name
    for name, (label, values) in [*LABELLED.items(), *ALSO_LABELLED.items()]:
        assert values <= {ls[label] for ls, _ in samples[name]}, name
    assert total(samples, "rankstream_workers") >= 1
    assert "rankstream_queue_depth" in samples


def _counted(after: Samples, before: Samples) -> Samples | None:
    done = total(after, "rankstream_jobs_total", outcome="done") - total(
        before, "rankstream_jobs_total", outcome="done"
    )
    return after if done else None


def test_a_job_moves_the_readings(
    worker: WorkerProcess, module_settings: Settings, connection: redis.Redis
) -> None:
    before = scrape(worker)
    handle = enqueue(example.example_request(), settings=module_settings)
    assert finished_stream(connection, handle.job_id)[-1]["type"] == "done"
    # the worker counts the job just after writing its terminal event
    after = wait_for(lambda: _counted(scrape(worker), before), 5, "the job to be counted")

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("rankstream_jobs_total", outcome="done") == 1
    assert moved("rankstream_items_published_total") == 10
    assert moved("rankstream_time_to_first_item_seconds_count") == 1
    assert moved("rankstream_publish_latency_seconds_count") == 10
    assert moved("rankstream_item_gap_seconds_count") == 9
    assert moved("rankstream_llm_tokens_total", kind="completion", counted="reported") > 0
    assert moved("rankstream_llm_tokens_total", counted="estimated") == 0  # the simulator reports usage
    assert total(after, "rankstream_jobs_in_progress") == 0
