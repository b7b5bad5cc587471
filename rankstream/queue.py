"""The RQ side of the contract: which queue, which job function, which serializer.

Jobs are JSON (never pickle: anyone who can write to Redis must not be able to run code in a
worker), and a worker runs only JOB_FUNCTION.
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from .settings import Settings

JOB_FUNCTION = "worker.job.rank"
SERIALIZER = JSONSerializer


def connect(settings: Settings) -> redis.Redis:
    """A client for REDIS_URL (default: the local Redis on 6379)."""
    return redis.Redis.from_url(settings.redis_address)


def ranking_queue(connection: redis.Redis, settings: Settings) -> Queue:
    return Queue(settings.queue, connection=connection, serializer=SERIALIZER)
