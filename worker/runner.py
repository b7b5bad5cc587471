"""`rankstream worker`: an RQ worker that runs ranking jobs and serves /metrics.

It is a plain RQ SimpleWorker underneath (so `rq info` sees it): jobs run in the worker
process, next to the shared runtime (event loop, LLM connection pool, Redis pool), instead of
in a forked child per job that would start every LLM connection cold.
"""

from __future__ import annotations

import logging

from rq import Queue, SimpleWorker
from rq.job import Job

from rankstream.queue import SERIALIZER, ranking_queue, rq_connection
from rankstream.settings import Settings

from .guard import GuardedJob
from .job import abandon, begin
from .metrics import serve_metrics
from .runtime import Runtime

log = logging.getLogger("rankstream.worker")


class RankingWorker(SimpleWorker):
    job_class = GuardedJob

    def execute_job(self, job: Job, queue: Queue) -> None:
        begin(job)  # the LLM request leaves now; RQ's bookkeeping runs meanwhile
        try:
            super().execute_job(job, queue)
        finally:
            abandon(job.id)


def run_worker(settings: Settings, *, burst: bool = False) -> bool:
    """Work the queue until stopped (or, with burst, until it is empty). True if any job ran.

    Raises LLMNotConfigured before touching the queue when no LLM was named.
    """
    runtime = Runtime(settings)
    Runtime.install(runtime)
    connection = rq_connection(settings)
    if settings.metrics_port:
        serve_metrics(settings.metrics_host, settings.metrics_port, connection, settings)
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
