"""What every subcommand shares: settings with the command line's flags on top, and logging."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from ..settings import Settings, get_settings


def settings(**overrides: Any) -> Settings:
    """The environment's settings with the flags that were given on top, validated alike.

    A bad value, from either, exits with the setting named.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        base = get_settings()
        return Settings.model_validate({**base.model_dump(), **given}) if given else base
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        name = field if field.isupper() else f"RANKSTREAM_{field.upper()}"  # REDIS_URL keeps its name
        cause = error.get("ctx", {}).get("error")
        raise SystemExit(f"rankstream: {name}: {cause or error['msg']}") from None


def configure_logging() -> None:
    level = settings().log_level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":  # one line per HTTP request is noise next to the job's own log
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)
