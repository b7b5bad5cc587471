"""`rankstream gateway` as a child process, for the gateway's and the page's tests."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import Process

from rankstream.dev.processes import wait_for
from rankstream.dev.redis_server import free_port
from rankstream.settings import Settings


class Gateway(Process):
    def __init__(self, settings: Settings, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        super().__init__(
            ["gateway", "--port", str(self.port)],
            {"REDIS_URL": settings.redis_url or "", "RANKSTREAM_QUEUE": settings.queue, **env},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._healthy, 20, "the gateway to answer")

    def _healthy(self) -> bool:
        if not self.alive():
            raise AssertionError(f"gateway exited: {self.stop()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/healthz", timeout=5).json()
        return answer
