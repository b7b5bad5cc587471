"""The HTTP app: its routes, request validation, and `create_app`.

`/v1/models` and `/v1/chat/completions` as OpenAI's API has them; `/sim/faults` (GET, POST)
to read and switch faults; `/sim/formats` (GET, POST) to read and set the forms of asking for
JSON it refuses; `/sim/requests` (GET, DELETE) to read and clear the request log.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .config import FAULTS, FORMS, SimConfig
from .faults import FaultSwitch, form_of, form_refusal, refusal_for
from .generation import DROP_KEY, Generation, transport_closer
from .plan import make_plan
from .record import REQUEST_LOG_SIZE, Record
from .wire import bad_request


class _SimApp(FastAPI):
    """FastAPI that remembers, per request, how to drop the TCP connection (the disconnect fault)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[DROP_KEY] = transport_closer(send)
        await super().__call__(scope, receive, send)


@dataclass
class _State:
    config: SimConfig
    faults: FaultSwitch
    log: deque[Record] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set when the server shuts down
    refuse: set[str] = field(default_factory=set)  # forms of asking for JSON answered with an error


def _validate(body: Any) -> JSONResponse | None:
    """An OpenAI-style 400 for a body the real API would refuse; None when it is fine."""
    if not isinstance(body, dict):
        return bad_request("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return bad_request("Missing required parameter: 'messages'.", "messages")
    if body.get("n") not in (None, 1):
        return bad_request("The simulator only supports n=1.", "n")
    if not isinstance(body.get("stream", False), bool | None):
        return bad_request("'stream' must be a boolean.", "stream")
    for name in ("max_tokens", "max_completion_tokens"):
        limit = body.get(name)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            return bad_request(f"'{name}' must be a positive integer.", name)
    return None


async def _read_body(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return bad_request("We could not parse the JSON body of your request.")
    return _validate(body) or body


async def _chat_completions(request: Request, state: _State) -> Response:
    started, received_at = asyncio.get_running_loop().time(), time.time()
    body = await _read_body(request)
    if isinstance(body, JSONResponse):
        return body
    form = form_of(body)
    fault = "none" if form in state.refuse else state.faults.take()  # a refusal takes no fault
    plan = make_plan(body, state.config, fault, started)
    record = Record(
        plan.id,
        plan.model,
        plan.stream,
        fault,
        received_at,
        tokens_planned=len(plan.tokens),
        candidates=plan.candidates,
        form=form,
        refused=form in state.refuse,
    )
    state.log.append(record)
    refusal = form_refusal(form) if record.refused else refusal_for(fault)
    if refusal is not None:
        record.tokens_planned = 0
        record.finish(completed=True)
        return refusal
    return Generation(plan, record, request.scope.get(DROP_KEY), state.closing)


async def _set_faults(request: Request, state: _State) -> JSONResponse:
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    fault = body.get("fault") if isinstance(body, dict) else None
    count = body.get("count") if isinstance(body, dict) else None
    if fault not in FAULTS:
        return bad_request(f"'fault' must be one of {', '.join(FAULTS)}.", "fault")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        return bad_request("'count' must be a positive integer or null.", "count")
    state.faults.set(fault, count)
    return JSONResponse(state.faults.snapshot())


async def _set_formats(request: Request, state: _State) -> JSONResponse:
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    refuse = body.get("refuse") if isinstance(body, dict) else None
    if not isinstance(refuse, list) or not all(form in FORMS for form in refuse):
        return bad_request(f"'refuse' must be a list of {', '.join(FORMS)}.", "refuse")
    state.refuse = set(refuse)
    return JSONResponse({"refuse": sorted(state.refuse)})


def _add_routes(app: FastAPI, state: _State) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": state.config.model, "object": "model", "created": 0, "owned_by": "rankstream"}
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _chat_completions(request, state)

    @app.get("/sim/faults")
    async def get_faults() -> dict[str, Any]:
        return state.faults.snapshot()

    @app.post("/sim/faults")
    async def set_faults(request: Request) -> JSONResponse:
        return await _set_faults(request, state)

    @app.get("/sim/formats")
    async def get_formats() -> dict[str, Any]:
        return {"refuse": sorted(state.refuse)}

    @app.post("/sim/formats")
    async def set_formats(request: Request) -> JSONResponse:
        return await _set_formats(request, state)

    @app.get("/sim/requests")
    async def requests_log() -> list[dict[str, Any]]:
        return [asdict(record) for record in state.log]

    @app.delete("/sim/requests")
    async def clear_requests_log() -> dict[str, int]:
        cleared = len(state.log)
        state.log.clear()
        return {"cleared": cleared}


def create_app(config: SimConfig) -> FastAPI:
    """The simulator as an ASGI app: `/v1/models`, `/v1/chat/completions` and `/sim/*`."""
    if config.fault not in FAULTS:
        raise ValueError(f"unknown fault {config.fault!r}; choose one of {', '.join(FAULTS)}")
    if config.tokens_per_second <= 0 or config.ttft < 0:
        raise ValueError("tokens_per_second must be positive and ttft not negative")
    app = _SimApp(title="rankstream LLM simulator", docs_url=None, redoc_url=None, openapi_url=None)
    unknown = set(config.refuse) - set(FORMS)
    if unknown:
        raise ValueError(f"cannot refuse {', '.join(sorted(unknown))}; choose from {', '.join(FORMS)}")
    state = _State(config, FaultSwitch(config.fault), refuse=set(config.refuse))
    app.state.sim_closing = state.closing
    _add_routes(app, state)
    return app
