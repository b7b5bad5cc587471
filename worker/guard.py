"""What a worker agrees to run: only the ranking job, with no callbacks or webhooks.

Anyone who can write to the queue could name any importable function (`os.system`) or hang a
callback or a webhook on a job. GuardedJob refuses all of that before importing anything: such a
job fails, visibly in RQ, without running.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job

from rankstream.queue import JOB_FUNCTION


class RefusedJob(Exception):
    """The job names something other than the ranking job; it was not run."""


class GuardedJob(Job):
    @property
    def func(self) -> Any:
        if self.func_name != JOB_FUNCTION or self.instance is not None:
            raise RefusedJob(f"this worker runs only {JOB_FUNCTION}; refused {self.func_name!r}")
        return super().func

    # Callbacks and webhooks are never ours: a job that carries them was not made by enqueue().
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        return None
