"""All configuration, read once from the environment (prefix RANKSTREAM_).

REDIS_URL, OPENAI_API_KEY and OPENAI_BASE_URL keep the names every other tool uses.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RANKSTREAM_", extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL"))
    openai_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(default=None, validation_alias=AliasChoices("OPENAI_BASE_URL"))

    model: str = "gpt-4o-mini"
    queue: str = "rankstream"
    stream_ttl: int = Field(default=3600, ge=1)
    first_token_timeout: float = Field(default=30.0, gt=0)
    idle_timeout: float = Field(default=10.0, gt=0)
    job_timeout: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    lease_seconds: float = Field(default=30.0, gt=0, le=60)
    concurrency: int = Field(default=1, ge=1, le=1)
    fallback: bool = True

    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"

    sim_ttft: float = Field(default=0.5, ge=0)
    sim_tokens_per_second: float = Field(default=50.0, gt=0)

    @property
    def redis_address(self) -> str:
        """REDIS_URL, else the local Redis on its usual port."""
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def uses_simulator(self) -> bool:
        """No key and no base URL: the embedded LLM simulator answers."""
        return self.openai_api_key is None and self.openai_base_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
