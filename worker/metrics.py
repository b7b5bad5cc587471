"""The worker's Prometheus metrics: the names DESIGN.md fixes, and the /metrics server.

Labelled counters are created with every known label value at zero, so dashboards and
alerts never see a series appear out of nowhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from rq import Worker

from rankstream.codes import ErrorCode, RejectReason, RetryCause
from rankstream.queue import ranking_queue
from rankstream.settings import Settings

OUTCOMES = ("done", *ErrorCode)
TOKEN_KINDS = ("prompt", "completion")
TOKEN_COUNTS = ("reported", "estimated")

# What a user feels: the OpenTelemetry GenAI conventions' time-to-first-chunk buckets (0.01 s
# doubling to 81.92 s), so these compare with any other GenAI tool's; 0.25 and 0.5 added where
# a hosted model's first token usually lands.
_LATENCY = (0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.32, 0.5, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
# What the machinery adds: well under a millisecond when healthy.
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

time_to_first_item = Histogram(
    "rankstream_time_to_first_item_seconds", "Enqueue to the first item on the stream.", buckets=_LATENCY
)
llm_time_to_first_item = Histogram(
    "rankstream_llm_time_to_first_item_seconds",
    "LLM request to the first item on the stream.",
    buckets=_LATENCY,
)
queue_wait = Histogram(
    "rankstream_queue_wait_seconds", "Enqueue to a worker starting the job.", buckets=_LATENCY
)
llm_time_to_first_token = Histogram(
    "rankstream_llm_time_to_first_token_seconds", "LLM request to its first token.", buckets=_LATENCY
)
publish_latency = Histogram(
    "rankstream_publish_latency_seconds",
    "An element's closing brace parsed to its XADD acknowledged.",
    buckets=_FAST,
)
item_gap = Histogram(
    "rankstream_item_gap_seconds", "Between consecutive items of one job.", buckets=(0.001, 0.005, *_LATENCY)
)
job_duration = Histogram(
    "rankstream_job_duration_seconds", "A worker starting a job to its end.", buckets=_LATENCY
)

jobs = Counter("rankstream_jobs", "Jobs ended, by outcome (done or the error code).", ["outcome"])
items_published = Counter("rankstream_items_published", "Items published to job streams.")
items_rejected = Counter("rankstream_items_rejected", "Items the worker refused, by reason.", ["reason"])
llm_retries = Counter("rankstream_llm_retries", "LLM calls retried, by cause.", ["cause"])
llm_tokens = Counter(
    "rankstream_llm_tokens",
    "LLM tokens, by kind (prompt or completion) and how counted (reported by the server, or estimated).",
    ["kind", "counted"],
)
jobs_in_progress = Gauge("rankstream_jobs_in_progress", "Jobs this worker is running now.")
worker_slots = Gauge("rankstream_worker_slots", "Jobs this worker may run at once (RANKSTREAM_CONCURRENCY).")

for _outcome in OUTCOMES:
    jobs.labels(_outcome)
for _reason in RejectReason:
    items_rejected.labels(_reason)
for _cause in RetryCause:
    llm_retries.labels(_cause)
for _kind in TOKEN_KINDS:
    for _counted in TOKEN_COUNTS:
        llm_tokens.labels(_kind, _counted)


class QueueCollector(Collector):
    """Queue depth and live workers, read from Redis at scrape time (not per job)."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self._connection = connection
        self._settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = ranking_queue(self._connection, self._settings)
        depth = GaugeMetricFamily("rankstream_queue_depth", "Jobs waiting on the queue.", labels=["queue"])
        workers = GaugeMetricFamily("rankstream_workers", "RQ workers serving the queue.", labels=["queue"])
        try:
            depth.add_metric([queue.name], queue.count)
            workers.add_metric([queue.name], Worker.count(queue=queue))
        except redis.RedisError:
            return  # no Redis, no reading: an absent sample, not a made-up zero
        yield depth
        yield workers


def serve_metrics(host: str, port: int, connection: redis.Redis, settings: Settings) -> None:
    REGISTRY.register(QueueCollector(connection, settings))
    start_http_server(port, addr=host)
