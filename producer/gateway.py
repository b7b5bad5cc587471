"""The HTTP gateway for frontends: rankings over REST, each job's stream as server-sent events.

`POST /v1/rankings` enqueues (202 and the handle; 422 naming the field; 409 for a request_id
that names another body), `GET /v1/rankings/{id}` is the job at a glance,
`GET /v1/rankings/{id}/events` its stream as SSE (`id:` the Redis entry id, `event:` the type,
`data:` the entry's data; from the start, or after `Last-Event-ID`; a keep-alive comment when
idle; closed after the terminal event), `DELETE /v1/rankings/{id}` asks for a cancel. An
unknown job is 404, an expired one 410. `/healthz` answers when Redis does; `/` is the demo
page. Subscribers share one blocking Redis read per process (producer/fanout.py), so a
position lives only in the client's `Last-Event-ID`: any gateway instance can resume it.
"""

from __future__ import annotations

import contextlib
import hmac
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import redis.asyncio
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from rankstream import keys
from rankstream.codes import EventType
from rankstream.connections import bounded_async_client
from rankstream.exceptions import InvalidRequest, JobGone, JobNotFound, RequestConflict
from rankstream.models import Handle, JobStatus, RankingRequest
from rankstream.settings import Settings, get_settings

from . import aio, core, gateway_metrics
from .fanout import StreamHub, entry_key

STATIC = Path(__file__).with_name("static")
REDIS_CONNECTIONS = 8  # the short calls of every request (status, catch-up reads, cancel checks)
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


class CancelRequested(BaseModel):
    job_id: str
    cancel_requested: bool = True
    ended: bool  # the job was still queued and has ended `cancelled` now; else a running one sees the request


class Problem(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    subscribers: int  # SSE clients following a stream now
    streams: int  # streams they follow
    reads: int  # blocking reads made for all of them since start


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="rankstream gateway",
        version="1",
        summary="Stream LLM product rankings item by item.",
        lifespan=_lifespan(settings),
    )
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_exception_handler(InvalidRequest, _invalid)  # type: ignore[arg-type]
    app.add_middleware(gateway_metrics.CountRequests)
    _routes(app, settings)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="page")
    return app


def _lifespan(settings: Settings) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url, timeout = settings.redis_address, settings.redis_timeout
        connection = bounded_async_client(url, timeout, REDIS_CONNECTIONS)
        reader = bounded_async_client(url, timeout, 1)  # the one blocking read, for every subscriber
        socket_timeout = reader.connection_pool.connection_kwargs.get("socket_timeout")
        app.state.redis = connection
        app.state.hub = StreamHub(reader, connection, core.xread_block_ms(5.0, socket_timeout))
        gateway_metrics.watch(app.state.hub)
        try:
            yield
        finally:
            await app.state.hub.aclose()
            await reader.aclose()
            await connection.aclose()

    return lifespan


def _redis(request: Request) -> redis.asyncio.Redis:
    connection: redis.asyncio.Redis = request.app.state.redis
    return connection


def _hub(request: Request) -> StreamHub:
    hub: StreamHub = request.app.state.hub
    return hub


Connection = Annotated[redis.asyncio.Redis, Depends(_redis)]
Hub = Annotated[StreamHub, Depends(_hub)]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "no such job"},
    410: {"model": Problem, "description": "the job's stream has expired"},
}


def _routes(app: FastAPI, settings: Settings) -> None:
    authorized = _bearer(settings)

    @app.post(
        "/v1/rankings",
        status_code=202,
        response_model=Handle,
        dependencies=[Depends(authorized)],
        responses={409: {"model": Problem, "description": "this request_id names another request"}},
    )
    async def enqueue(ranking: RankingRequest) -> Handle:
        """Enqueue a ranking; its events appear on the handle's stream."""
        try:
            return await aio.enqueue(ranking, settings=settings)
        except RequestConflict as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/v1/rankings/{job_id}", response_model=JobStatus, responses=NOT_FOUND)
    async def status(job_id: str, connection: Connection) -> JobStatus:
        """The job at a glance: queued, running, done or error, its items so far, its timings."""
        try:
            return await aio.status(job_id, connection=connection, settings=settings)
        except (JobNotFound, JobGone) as exc:
            raise _lookup(exc) from None

    @app.get(
        "/v1/rankings/{job_id}/events",
        response_class=StreamingResponse,
        responses={**NOT_FOUND, 200: {"content": {"text/event-stream": {}}, "description": "the events"}},
    )
    async def events(
        job_id: str,
        connection: Connection,
        hub: Hub,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """The job's events as server-sent events, from the start or after `Last-Event-ID`."""
        after = last_event_id.strip() if last_event_id else "0-0"
        if last_event_id:
            gateway_metrics.resumes.inc()
        if not _ENTRY_ID.fullmatch(after):
            after = "0-0"  # not an id this gateway gave: the whole stream, which the client dedups by id
        await _known(connection, job_id, settings)
        return StreamingResponse(
            _sse(hub, connection, job_id, after, settings),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.delete(
        "/v1/rankings/{job_id}",
        status_code=202,
        response_model=CancelRequested,
        dependencies=[Depends(authorized)],
        responses=NOT_FOUND,
    )
    async def cancel(job_id: str, connection: Connection) -> CancelRequested:
        """Ask for the job to stop; it ends with `error` `cancelled` (unless it ended first)."""
        await _known(connection, job_id, settings)
        return CancelRequested(job_id=job_id, ended=await aio.cancel(job_id, settings=settings))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Problem}})
    async def healthz(connection: Connection, hub: Hub) -> Health:
        """200 while this gateway reaches Redis; how many subscribers it serves, on how many reads."""
        try:
            await connection.ping()
        except redis.RedisError as exc:
            raise HTTPException(503, f"Redis: {type(exc).__name__}") from None
        return Health(status="ok", subscribers=hub.subscribers, streams=hub.streams, reads=hub.reads)


def _bearer(settings: Settings) -> Any:
    token = settings.gateway_token.get_secret_value().encode() if settings.gateway_token else None

    async def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    return authorized


async def _known(connection: redis.asyncio.Redis, job_id: str, settings: Settings) -> None:
    try:
        await aio.ensure_known(connection, job_id, settings)
    except (JobNotFound, JobGone) as exc:
        raise _lookup(exc) from None


def _lookup(exc: JobNotFound | JobGone) -> HTTPException:
    return HTTPException(410 if isinstance(exc, JobGone) else 404, str(exc))


async def _invalid(request: Request, exc: InvalidRequest) -> JSONResponse:
    """The producer's own refusals, shaped as FastAPI's 422: each error names its field."""
    detail = [
        {"loc": ["body", *error["field"].split(".")], "msg": error["message"], "type": "value_error"}
        for error in exc.errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _ended_before(connection: redis.asyncio.Redis, stream: str, after: str) -> bool:
    """Whether the stream's terminal event is at or before `after`."""
    last: Any = await connection.xrevrange(stream, count=1)
    if not last:
        return False
    entry_id, fields = last[0]
    return EventType(fields[b"type"].decode()).terminal and entry_key(entry_id.decode()) <= entry_key(after)


async def _sse(
    hub: StreamHub, connection: redis.asyncio.Redis, job_id: str, after: str, settings: Settings
) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"  # EventSource reconnects after a second, with Last-Event-ID
    if await _ended_before(connection, keys.events(job_id), after):
        return  # resumed after the terminal event: there is nothing more
    async with hub.subscribe(keys.events(job_id), after) as subscription:
        while True:
            batch = await subscription.next(settings.sse_keepalive)
            if not batch:
                if not await connection.exists(keys.events(job_id), keys.state(job_id)):
                    return  # expired while idle: a reconnect is answered 410
                yield b": keep-alive\n\n"
                continue
            out = []
            terminal = False
            for entry_id, fields in batch:
                kind = EventType(fields[b"type"].decode())
                data = fields[b"data"].replace(b"\n", b"\ndata: ")
                out.append(b"id: %s\nevent: %s\ndata: %s\n\n" % (entry_id.encode(), fields[b"type"], data))
                gateway_metrics.events_sent.labels(kind).inc()
                if kind.terminal:
                    terminal = True
                    break
            yield b"".join(out)
            if terminal:
                return
