"""RQ's forking `Worker` running this project's job: the alternative the pickup benchmark measures."""

from __future__ import annotations

from rq import Worker

from rankstream.queue import SERIALIZER, ranking_queue, rq_connection
from rankstream.settings import get_settings
from worker.guard import GuardedJob

if __name__ == "__main__":
    settings = get_settings()
    connection = rq_connection(settings)
    queue = ranking_queue(connection, settings)
    Worker([queue], connection=connection, serializer=SERIALIZER, job_class=GuardedJob).work(
        logging_level="WARNING"
    )
