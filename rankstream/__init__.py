"""rankstream: stream LLM product rankings item by item, from an RQ job to the page.

This package is the shared base every part builds on: the request and event models, codes,
settings, Redis key names and clients, the Lua scripts, errors. It imports neither `worker` nor
`producer`; `rankstream.cli` (the `rankstream` command) is the one place that wires the parts
together, `rankstream.simulator` is the LLM simulator and `rankstream.dev` holds the helpers of
the demo, the tests and the bench. The producer API lives in `producer`, the worker in `worker`.
"""

from .codes import ErrorCode, EventType, RejectReason, RetryCause, Source
from .exceptions import (
    InvalidRequest,
    JobFailed,
    JobGone,
    JobNotFound,
    LLMNotConfigured,
    RankstreamError,
    RequestConflict,
)
from .models import Event, Handle, JobStatus, Product, RankingRequest, Recommendation
from .settings import Settings, get_settings

__version__ = "0.1.0"

__all__ = [
    "ErrorCode",
    "Event",
    "EventType",
    "Handle",
    "InvalidRequest",
    "JobFailed",
    "JobGone",
    "JobNotFound",
    "JobStatus",
    "LLMNotConfigured",
    "Product",
    "RankingRequest",
    "RankstreamError",
    "Recommendation",
    "RejectReason",
    "RequestConflict",
    "RetryCause",
    "Settings",
    "Source",
    "get_settings",
]
