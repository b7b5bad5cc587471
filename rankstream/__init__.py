"""rankstream: stream LLM product rankings item by item, from an RQ job to the page.

This package holds what every part shares: the request and event models, settings, Redis key
names, errors and the `rankstream` command. The producer API lives in `producer`, the worker in
`worker`.
"""

from .exceptions import InvalidRequest, JobFailed, JobGone, JobNotFound, RankstreamError
from .models import Event, Handle, Product, RankingRequest, Recommendation
from .settings import Settings, get_settings

__version__ = "0.1.0"

__all__ = [
    "Event",
    "Handle",
    "InvalidRequest",
    "JobFailed",
    "JobGone",
    "JobNotFound",
    "Product",
    "RankingRequest",
    "RankstreamError",
    "Recommendation",
    "Settings",
    "get_settings",
]
