"""What upstream services use: enqueue a ranking, read its events, see its status, cancel it.

`from producer import enqueue, events, cancel, status` are synchronous; `producer.aio` has the
same calls for asyncio.
"""

from .client import cancel, enqueue, events, status
from .core import validate

__all__ = ["cancel", "enqueue", "events", "status", "validate"]
