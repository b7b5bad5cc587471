"""The RQ side of the contract: which queue, which job function, which serializer.

Jobs are JSON (never pickle: anyone who can write to Redis must not be able to run code in a
worker), and a worker runs only JOB_FUNCTION.
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from .connections import client_options
from .settings import Settings

JOB_FUNCTION = "worker.job.rank"
SERIALIZER = JSONSerializer


def rq_connection(settings: Settings) -> redis.Redis:
    """A client of its own for RQ: RQ's worker adjusts its pool's socket timeout to its own needs."""
    url = settings.redis_address
    return redis.Redis.from_url(url, **client_options(url, settings.redis_timeout))


def ranking_queue(connection: redis.Redis, settings: Settings) -> Queue:
    return Queue(settings.queue, connection=connection, serializer=SERIALIZER)
