"""`rankstream worker`: check what the worker needs, then run the RQ worker and serve /metrics.

Jobs run in the worker process, next to the shared runtime (event loop, LLM connection pool,
Redis pool), many at once (worker/rq_worker.py), instead of in a forked child per job that would
start every LLM connection cold.
"""

from __future__ import annotations

import logging

import redis

from rankstream.connections import connect, redacted
from rankstream.exceptions import RedisUnavailable
from rankstream.queue import SERIALIZER, ranking_queue, rq_connection
from rankstream.settings import Settings

from .metrics import serve_metrics
from .rq_worker import RankingWorker
from .runtime import Runtime

log = logging.getLogger("rankstream.worker")

TLS_HINT = (
    " (the TLS handshake failed: check ssl_ca_certs, and ssl_certfile/ssl_keyfile if the server"
    " requires client certificates)"
)


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
        runtime=runtime,
        connection=connection,
        serializer=SERIALIZER,
        log_job_description=False,
    )
    worker.log_result_lifespan = False  # a log line per job is noise at hundreds of jobs
    log.info(
        "LLM at %s; %d jobs at once; metrics on :%s",
        runtime.llm_base_url or "api.openai.com",
        settings.concurrency,
        settings.metrics_port,
    )
    try:
        return bool(worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False))
    finally:
        runtime.close()
