"""What upstream services use: enqueue a ranking, read its events, cancel it."""

from .cancel import cancel
from .enqueue import enqueue, validate
from .events import events

__all__ = ["cancel", "enqueue", "events", "validate"]
