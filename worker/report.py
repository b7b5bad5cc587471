"""What a job tells about itself: rejects by reason, token usage, timings, and their metrics.

One `Report` per job, fed by the ranking as things happen; it observes the Prometheus
histograms at the moment each fact is known and builds the `done` event's counts at the end.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rankstream.codes import RejectReason
from rankstream.models import CHARS_PER_TOKEN, USAGE_ESTIMATE, Timings, Usage

from . import metrics
from .llm import StreamState


class Report:
    def __init__(self) -> None:
        self.rejected = dict.fromkeys(RejectReason, 0)
        self.usage: Usage | None = None
        self.enqueued_at: float | None = None  # epoch seconds, from the job's state in Redis
        self.first_token_at: float | None = None
        self.last_item_at: float | None = None

    def started(self, enqueued_at: float | None) -> None:
        """An attempt began; the first one tells how long the job waited in the queue."""
        if self.enqueued_at is None and enqueued_at is not None:
            self.enqueued_at = enqueued_at
            metrics.queue_wait.observe(max(0.0, time.time() - enqueued_at))

    def reject(self, reason: RejectReason) -> None:
        self.rejected[reason] += 1
        metrics.items_rejected.labels(reason).inc()

    def first_token(self, state: StreamState) -> None:
        if self.first_token_at is None and state.first_token_at is not None:
            self.first_token_at = state.first_token_at
            metrics.llm_time_to_first_token.observe(state.first_token_at - state.requested_at)

    def published(self, rank: int, closed: float, state: StreamState | None) -> None:
        """An item is on the stream; `closed` is the perf_counter when its element closed."""
        now = time.time()
        metrics.publish_latency.observe(time.perf_counter() - closed)
        metrics.items_published.inc()
        if rank == 1:
            if self.enqueued_at is not None:
                metrics.time_to_first_item.observe(now - self.enqueued_at)
            if state is not None:
                metrics.llm_time_to_first_item.observe(now - state.requested_at)
        if self.last_item_at is not None:
            metrics.item_gap.observe(now - self.last_item_at)
        self.last_item_at = now

    def stream_ended(self, state: StreamState, chat: dict[str, Any]) -> None:
        """Add one LLM call's usage: the server's, else an estimate (a call cut short reports none)."""
        self.first_token(state)
        usage = state.usage or _estimated(_prompt_chars(chat), state.chars)
        counted = "estimated" if usage.estimated else "reported"
        metrics.llm_tokens.labels("prompt", counted).inc(usage.prompt_tokens)
        metrics.llm_tokens.labels("completion", counted).inc(usage.completion_tokens)
        if self.usage is not None:
            estimated = sorted({*self.usage.estimated, *usage.estimated})
            usage = Usage(
                prompt_tokens=self.usage.prompt_tokens + usage.prompt_tokens,
                completion_tokens=self.usage.completion_tokens + usage.completion_tokens,
                total_tokens=self.usage.total_tokens + usage.total_tokens,
                estimated=estimated,
                estimate=USAGE_ESTIMATE if estimated else None,
            )
        self.usage = usage

    def timings(self, started: float | None, first_item: float | None) -> Timings:
        """Seconds since enqueue; `started` and `first_item` are the moments Redis recorded."""
        if self.enqueued_at is None:
            return Timings()
        base = self.enqueued_at
        return Timings(
            queue_wait=_since(base, started),
            first_token=_since(base, self.first_token_at),
            first_item=_since(base, first_item),
            total=_since(base, time.time()),
        )


def _prompt_chars(chat: dict[str, Any]) -> int:
    """The characters of what a chat request asks: messages, and the schema it carries (if any)."""
    schema = chat.get("response_format") or chat.get("tools")
    text = sum(len(message["content"]) for message in chat["messages"])
    return text + (len(json.dumps(schema, separators=(",", ":"))) if schema else 0)


def _estimated(prompt_chars: int, completion_chars: int) -> Usage:
    prompt, completion = -(-prompt_chars // CHARS_PER_TOKEN), -(-completion_chars // CHARS_PER_TOKEN)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        estimated=["completion_tokens", "prompt_tokens"],
        estimate=USAGE_ESTIMATE,
    )


def _since(base: float, moment: float | None) -> float | None:
    return None if moment is None else round(max(0.0, moment - base), 6)
