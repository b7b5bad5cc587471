"""The gateway's Prometheus metrics, served at its own `/metrics`.

Subscribers and the streams they follow (read from the hub at scrape time), SSE events sent,
resumes (a connection that brought a Last-Event-ID), and HTTP answers by route template,
method and status: bounded label sets, never a job id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .fanout import StreamHub

subscribers = Gauge("rankstream_gateway_subscribers", "SSE clients following a job's stream now.")
streams = Gauge("rankstream_gateway_streams", "Job streams those clients follow.")
events_sent = Counter("rankstream_gateway_events_sent", "SSE events written to clients.", ["type"])
resumes = Counter("rankstream_gateway_resumes", "SSE connections that resumed with a Last-Event-ID.")
requests = Counter(
    "rankstream_gateway_requests",
    "HTTP answers, by route template, method and status.",
    ["route", "method", "status"],
)

for _type in ("started", "item", "done", "error"):
    events_sent.labels(_type)


def watch(hub: StreamHub) -> None:
    """Read the hub's counts at each scrape (the last hub made, one per process)."""
    subscribers.set_function(lambda: hub.subscribers)
    streams.set_function(lambda: hub.streams)


class CountRequests:
    """ASGI middleware: one count per answer, labelled by the route that served it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                path = getattr(route, "path", None)
                template = (
                    path
                    if (isinstance(path, str) and path.startswith("/v1")) or path in ("/healthz", "/metrics")
                    else "other"
                )
                requests.labels(template, scope["method"], str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)
