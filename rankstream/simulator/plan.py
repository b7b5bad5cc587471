"""Planning one answer: everything a generation needs, decided before the first byte goes out.

`make_plan` reads the prompt, ranks, composes the text in the requested shape, tokenizes it
and applies the token limit; the result, a `Plan`, is what the wire format and the pacing use.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .answer import compose
from .config import SimConfig
from .prompt import read_prompt, text_of
from .ranking import rank
from .shapes import shape_of
from .tokens import tokenize


@dataclass(frozen=True)
class Plan:
    """Everything one generation needs, decided before the first byte goes out."""

    id: str
    created: int
    model: str
    stream: bool
    include_usage: bool
    fault: str
    tokens: list[str]
    finish_reason: str
    tool: tuple[str, str] | None  # (call id, function name) when answering with a tool call
    prompt_tokens: int
    started: float  # event-loop clock at the request's arrival
    ttft: float
    tokens_per_second: float
    candidates: list[str]  # the product_ids the prompt offered, in its order

    def usage(self, completion_tokens: int) -> dict[str, int]:
        total = self.prompt_tokens + completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total,
        }


def _token_limit(body: Mapping[str, Any]) -> int | None:
    limits = [v for v in (body.get("max_tokens"), body.get("max_completion_tokens")) if isinstance(v, int)]
    return min(limits) if limits else None


def _requested_model(body: Mapping[str, Any], config: SimConfig) -> str:
    """Echo the requested model name, as a deployment alias would; the configured one otherwise."""
    model = body.get("model")
    return model if isinstance(model, str) and model else config.model


def make_plan(body: Mapping[str, Any], config: SimConfig, fault: str, started: float) -> Plan:
    messages = body["messages"]
    profile, candidates = read_prompt(messages)
    shape = shape_of(body)
    text, finish = compose(shape, rank(profile, candidates), fault)
    tokens = tokenize(text)
    limit = _token_limit(body)
    if limit is not None and len(tokens) > limit:
        tokens, finish = tokens[:limit], "length"
    tool = ("call_" + secrets.token_hex(12), shape.tool_name) if shape.kind == "tool" and candidates else None
    options = body.get("stream_options")
    return Plan(
        id="chatcmpl-" + secrets.token_hex(12),
        created=int(time.time()),
        model=_requested_model(body, config),
        stream=bool(body.get("stream")),
        # no_usage: a server that sends no usage chunk even when asked (many local servers)
        include_usage=isinstance(options, Mapping)
        and bool(options.get("include_usage"))
        and fault != "no_usage",
        fault=fault,
        tokens=tokens,
        finish_reason="tool_calls" if tool and finish == "stop" else finish,
        tool=tool,
        prompt_tokens=max(1, sum(len(text_of(m)) for m in messages) // 4),
        started=started,
        ttft=config.ttft,
        tokens_per_second=config.tokens_per_second,
        candidates=[c.product_id for c in candidates],
    )
