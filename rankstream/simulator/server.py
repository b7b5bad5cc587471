"""Running the simulator: `serve` in the foreground, `start_in_thread` beside the caller."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from types import TracebackType
from typing import Any

import uvicorn

from .app import create_app
from .config import SimConfig

_GRACEFUL_SHUTDOWN_SECONDS = 2.0


class _Server(uvicorn.Server):
    """uvicorn that first tells the simulator's open generations to end, so shutdown is prompt."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        closing = getattr(getattr(self.config.app, "state", None), "sim_closing", None)
        if isinstance(closing, asyncio.Event):
            closing.set()
        await super().shutdown(sockets=sockets)


def _server(config: SimConfig, **options: Any) -> _Server:
    return _Server(
        uvicorn.Config(
            create_app(config),
            lifespan="off",
            timeout_graceful_shutdown=int(_GRACEFUL_SHUTDOWN_SECONDS),
            **options,
        )
    )


def serve(host: str, port: int, config: SimConfig) -> None:
    """Run the simulator in the foreground until interrupted (`rankstream llm-sim`)."""
    _server(config, host=host, port=port).run()


def _url_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


class RunningSim:
    """A simulator serving from a daemon thread; `stop()` (or leaving the `with`) shuts it down."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.port = port
        self.url = f"http://{_url_host(host)}:{port}"

    @property
    def base_url(self) -> str:
        """What `openai.OpenAI(base_url=...)` takes."""
        return self.url + "/v1"

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the LLM simulator on port {self.port} did not stop within {timeout} s")

    def __enter__(self) -> RunningSim:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    """Bind before the server starts, so port 0 is resolved and cannot be taken meanwhile.

    The protocol must be IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets,
    and without it every response waits ~40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _wait_until_up(sim: RunningSim, server: uvicorn.Server, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the LLM simulator exited while starting; see its log")
        if server.started:
            try:
                with opener.open(sim.base_url + "/models", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.01)  # polling interval while uvicorn starts
    sim.stop()
    raise TimeoutError(f"the LLM simulator did not answer within {timeout} s")


def start_in_thread(
    config: SimConfig, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0
) -> RunningSim:
    """Serve the simulator from a daemon thread (port 0: a free one); returns once it answers."""
    sock = _bind(host, port)
    # Embedded: leave the host process's logging configuration alone, and stay quiet.
    server = _server(config, log_config=None, log_level="warning", access_log=False)
    bound_port = sock.getsockname()[1]
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"rankstream-sim:{bound_port}", daemon=True
    )
    thread.start()
    sim = RunningSim(server, thread, host, bound_port)
    _wait_until_up(sim, server, thread, timeout)
    return sim
