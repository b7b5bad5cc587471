"""The request log: one `Record` per chat request, as `GET /sim/requests` reports it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

REQUEST_LOG_SIZE = 1000


@dataclass
class Record:
    """One chat request as `GET /sim/requests` reports it; times are `time.time()` floats.

    `first_token_at`: when the first token went out (unstreamed: when the answer did).
    `completed`: the whole response went out (a 429/500 fault's error body counts).
    `client_closed`: the client went away before that; generation stopped there.
    `candidates`: the product_ids the prompt offered, in its order.
    `form`: how it asked for JSON; `refused`: that form is one the simulator was told to refuse.
    A `disconnect` fault leaves both false: the simulator dropped the connection itself.
    """

    id: str
    model: str
    stream: bool
    fault: str
    received_at: float
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens_planned: int = 0
    tokens_sent: int = 0
    completed: bool = False
    client_closed: bool = False
    candidates: list[str] = field(default_factory=list)
    form: str = "text"  # how it asked for JSON: json_schema, json_object, tools or text
    refused: bool = False  # answered with an error, as a server lacking that form does

    def finish(self, *, completed: bool = False, client_closed: bool = False) -> None:
        """Set the outcome and its time together, so a reader of the log never sees one without the other."""
        if self.finished_at is None:
            self.completed, self.client_closed, self.finished_at = completed, client_closed, time.time()
