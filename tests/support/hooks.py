"""RQ hooks that leave a trace: callbacks that write a file, and a server that records webhooks.

A job carrying these is what someone with write access to the queue could hang on a ranking job.
The callbacks are real importable functions (tests/test_queue_safety.py starts its worker with
tests/ on PYTHONPATH, so `support.hooks` imports there as it does here); each writes a file
named after its hook and the job into the directory the job's meta names. The webhook receiver
is a real HTTP server that records every request it is sent.
"""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rq.job import Job

TRACE_DIR = "trace_dir"  # the key of the job's meta naming where traces go


def on_success(job: Job, connection: Any, result: Any) -> None:
    _trace(job, "success")


def on_failure(job: Job, connection: Any, *exc_info: Any) -> None:
    _trace(job, "failure")


def on_stopped(job: Job, connection: Any) -> None:
    _trace(job, "stopped")


def _trace(job: Job, hook: str) -> None:
    Path(job.meta[TRACE_DIR], f"{hook}-{job.id}").touch()


def traces(directory: Path) -> list[str]:
    """The traces the hooks left in `directory`, sorted."""
    return sorted(path.name for path in directory.iterdir())


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that answers 200 to everything and records what it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []  # (method, path)
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._record()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._record()

            def _record(self) -> None:
                received.append((self.command, self.path))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> WebhookReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown()
        self._server.server_close()
