"""`rankstream worker`: an RQ worker that runs ranking jobs and serves /metrics.

It is a plain RQ SimpleWorker underneath (so `rq info` sees it): jobs run in the worker
process, next to the shared runtime (event loop, LLM connection pool, Redis pool), instead of
in a forked child per job that would start every LLM connection cold.
"""

from __future__ import annotations

import logging

import redis
from rq import Queue, SimpleWorker
from rq.job import Job

from rankstream.connections import connect, redacted
from rankstream.exceptions import RedisUnavailable
from rankstream.queue import SERIALIZER, ranking_queue, rq_connection
from rankstream.settings import Settings

from .guard import GuardedJob
from .job import abandon, begin
from .metrics import serve_metrics
from .runtime import Runtime

log = logging.getLogger("rankstream.worker")

TLS_HINT = (
    " (the TLS handshake failed: check ssl_ca_certs, and ssl_certfile/ssl_keyfile if the server"
    " requires client certificates)"
)


class RankingWorker(SimpleWorker):
    job_class = GuardedJob

    def execute_job(self, job: Job, queue: Queue) -> None:
        begin(job)  # the LLM request leaves now; RQ's bookkeeping runs meanwhile
        try:
            super().execute_job(job, queue)
        finally:
            abandon(job.id)


async def _ping(runtime: Runtime) -> None:
    await runtime.redis.ping()


def _check_redis(runtime: Runtime, connection: redis.Redis) -> None:
    """Both clients reach Redis (address, TLS, credentials), or the worker does not start."""
    try:
        connection.ping()
        runtime.submit(_ping(runtime)).result()
    except redis.RedisError as exc:
        url = runtime.settings.redis_address
        hint = TLS_HINT if url.startswith("rediss://") and ("SSL" in str(exc) or "EOF" in str(exc)) else ""
        raise RedisUnavailable(f"cannot use REDIS_URL ({redacted(url)}): {exc}{hint}") from None


def run_worker(settings: Settings, *, burst: bool = False) -> bool:
    """Work the queue until stopped (or, with burst, until it is empty). True if any job ran.

    Raises LLMNotConfigured when no LLM was named, RedisUnavailable when Redis cannot be used,
    both before taking any job.
    """
    runtime = Runtime(settings)
    connection = rq_connection(settings)
    try:
        _check_redis(runtime, connection)
    except BaseException:
        runtime.close()
        raise
    Runtime.install(runtime)
    if settings.metrics_port:
        # Not RQ's client: RQ stretches its socket timeout to its long blocking reads.
        serve_metrics(settings.metrics_host, settings.metrics_port, connect(settings), settings)
    worker = RankingWorker(
        [ranking_queue(connection, settings)],
        connection=connection,
        serializer=SERIALIZER,
    )
    log.info("LLM at %s; metrics on :%s", runtime.llm_base_url or "api.openai.com", settings.metrics_port)
    try:
        return bool(worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False))
    finally:
        runtime.close()
