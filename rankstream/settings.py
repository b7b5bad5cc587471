"""All configuration, read once per process from the environment (prefix RANKSTREAM_).

REDIS_URL, OPENAI_API_KEY and OPENAI_BASE_URL keep the names every other tool uses.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .codes import ResponseFormat
from .connections import check_redis_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Jobs one worker process runs at once; chosen by measurement (docs/PERFORMANCE.md, section 7).
DEFAULT_CONCURRENCY = 100
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RANKSTREAM_", extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url")
    )

    model: str = "gpt-4o-mini"
    response_format: ResponseFormat = ResponseFormat.AUTO
    queue: str = "rankstream"
    stream_ttl: int = Field(default=3600, ge=1)
    first_token_timeout: float = Field(default=30.0, gt=0)
    idle_timeout: float = Field(default=10.0, gt=0)
    job_timeout: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    lease_seconds: float = Field(default=30.0, gt=0, le=60)
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=1000)
    shutdown_grace: float = Field(default=30.0, ge=0)
    fallback: bool = True
    # How the streamed completion is sent: worker/http_stream.py, or the openai client's own stack.
    llm_http: Literal["hand-written", "sdk"] = "hand-written"
    redis_timeout: float = Field(default=5.0, gt=0)

    # The gateway: a bearer token for POST and DELETE (off when unset), browser origins allowed
    # to call it (comma-separated, `*` for any), and how often an idle SSE stream gets a comment.
    gateway_token: SecretStr | None = None
    cors_origins: str = ""
    sse_keepalive: float = Field(default=15.0, gt=0)

    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    log_level: LogLevel = "INFO"

    sim_ttft: float = Field(default=0.5, ge=0)
    sim_tokens_per_second: float = Field(default=50.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url_form(cls, url: str | None) -> str | None:
        if url is not None:
            check_redis_url(url)
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @property
    def redis_address(self) -> str:
        """REDIS_URL, else the local Redis on its usual port."""
        return self.redis_url or DEFAULT_REDIS_URL

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def llm_configured(self) -> bool:
        """An LLM was named: a key (the OpenAI API) or a base URL (any compatible server)."""
        return self.openai_api_key is not None or self.openai_base_url is not None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The environment's settings, read on first use and then shared by every call."""
    return Settings()
