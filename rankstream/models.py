"""The request, the recommendation and the events: the one source of truth for their shape.

Everything that crosses a process boundary (the RQ job's argument, the entries on a job's
Redis stream, the gateway's JSON) is one of these models, so validation, JSON schema and
documentation cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from .codes import ErrorCode, EventType, RejectReason, Source

MAX_PROFILE_BYTES = 16 * 1024
MAX_PRODUCTS = 200
MAX_ID_LENGTH = 128


def _product_id(value: Any) -> Any:
    """Accept a string or an integer id; an integer becomes its decimal string."""
    if isinstance(value, bool):  # bool is an int subclass; True is not an id
        raise ValueError("must be a string or an integer, not a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty")
        return value
    raise ValueError("must be a string or an integer")


ProductId = Annotated[str, BeforeValidator(_product_id), Field(max_length=MAX_ID_LENGTH)]


class Product(BaseModel):
    """One candidate product of the catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: ProductId
    product_name: str = Field(min_length=1, max_length=1024)


class RankingRequest(BaseModel):
    """What a producer asks for: rank these products for this customer."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, min_length=1, max_length=256)
    profile: str = Field(min_length=1)
    products: list[Product] = Field(min_length=1, max_length=MAX_PRODUCTS)
    top_k: int | None = Field(default=None, ge=1, le=MAX_PRODUCTS)
    model: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("profile")
    @classmethod
    def _profile_size(cls, profile: str) -> str:
        size = len(profile.encode("utf-8"))
        if size > MAX_PROFILE_BYTES:
            raise ValueError(f"must be at most {MAX_PROFILE_BYTES} bytes of UTF-8, got {size}")
        return profile

    @field_validator("products")
    @classmethod
    def _unique_ids(cls, products: list[Product]) -> list[Product]:
        seen: set[str] = set()
        for index, product in enumerate(products):
            if product.product_id in seen:
                raise ValueError(f"product_id {product.product_id!r} repeats at index {index}")
            seen.add(product.product_id)
        return products

    def catalogue(self) -> dict[str, str]:
        """product_id -> product_name, in the request's order."""
        return {p.product_id: p.product_name for p in self.products}


class Recommendation(BaseModel):
    """One element of the LLM's ranked array: which product comes next."""

    product_id: ProductId


class Handle(BaseModel):
    """What enqueue returns: where the job's events will appear."""

    job_id: str
    stream_key: str


# --- events on a job's stream -------------------------------------------------------------


class Started(BaseModel):
    job_id: str
    attempt: int
    model: str


class ItemPublished(BaseModel):
    model_config = ConfigDict(extra="allow")  # the item model's extra fields ride along

    rank: int
    product_id: str
    product_name: str
    source: Source


class Timings(BaseModel):
    """Seconds, each measured from the moment the job was enqueued; None if it never happened."""

    queue_wait: float | None = None
    first_token: float | None = None
    first_item: float | None = None
    total: float | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Done(BaseModel):
    count: int
    rejected: dict[RejectReason, int]
    timings: Timings
    usage: Usage | None = None


class Failed(BaseModel):
    code: ErrorCode
    message: str
    retryable: bool
    attempt: int


class Event(BaseModel):
    """One entry of a job's stream, as subscribers see it."""

    id: str
    type: EventType
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.type.terminal


class JobStatus(BaseModel):
    """A job at a glance: where it is, the items so far, and its timings once done."""

    job_id: str
    status: Literal["queued", "running", "done", "error"]
    items: list[dict[str, Any]]
    timings: Timings | None = None
    error: Failed | None = None
