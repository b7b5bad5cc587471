"""The request, the recommendation and the events: the one source of truth for their shape.

Everything that crosses a process boundary (the RQ job's argument, the entries on a job's
Redis stream, the gateway's JSON) is one of these models, so validation, JSON schema and
documentation cannot drift apart.

The request's text rules, checked at enqueue time and stated in its JSON schema: no text field
holds a lone surrogate (it cannot be written as UTF-8) or a control character other than tab,
newline and carriage return; the profile and product names are not blank; product ids are used
verbatim, never trimmed, so an id that starts or ends with whitespace is refused (" 1 " and "1"
can never be two products that look the same); `top_k` is at most the number of products.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from .codes import ErrorCode, EventType, RejectReason, Source

MAX_PROFILE_BYTES = 16 * 1024
MAX_PRODUCTS = 200
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 1024
MAX_REQUEST_ID_LENGTH = 256
MAX_MODEL_LENGTH = 128

# The character classes of the schema's patterns, written with \uXXXX escapes that JSON
# Schema (ECMA-262), pydantic's Rust regex and Python's re all read the same way.
# C0 control characters, except tab, newline and carriage return:
_CONTROL = r"\u0000-\u0008\u000b\u000c\u000e-\u001f"
# Whitespace as str.strip() sees it (str.isspace), less the control characters refused anyway;
# spelled out rather than `\s`, whose meaning differs between regex dialects:
_SPACE = r"\t\n\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TEXT_PATTERN = f"^[^{_CONTROL}]*$"
NOT_BLANK_PATTERN = f"^[^{_CONTROL}]*[^{_CONTROL}{_SPACE}][^{_CONTROL}]*$"
ID_PATTERN = f"^[^{_CONTROL}{_SPACE}](?:[^{_CONTROL}]*[^{_CONTROL}{_SPACE}])?$"

_CONTROL_CHARACTER = re.compile(f"[{_CONTROL}]")
_TEXT_RULE = "no lone surrogates; no control characters other than tab, newline and carriage return"


def _refuse(kind: str, message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, context)


def _check_text(value: str) -> bytes:
    """Refuse what no text field may hold; returns the UTF-8 bytes (the profile counts them)."""
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = f"U+{ord(value[exc.start]):04X}"
        raise _refuse(
            "lone_surrogate",
            "must be valid Unicode text: a lone surrogate ({code}) at position {position}",
            code=code,
            position=exc.start,
        ) from None
    if bad := _CONTROL_CHARACTER.search(value):
        raise _refuse(
            "control_character",
            "must not contain control characters other than tab, newline and carriage return: "
            "{code} at position {position}",
            code=f"U+{ord(bad.group()):04X}",
            position=bad.start(),
        )
    return encoded


def _text(value: Any) -> Any:
    """request_id, model: any text within the text rules."""
    if isinstance(value, str):
        _check_text(value)
    return value


def _not_blank(value: Any) -> Any:
    """product_name: text within the text rules with something besides whitespace in it."""
    if isinstance(value, str):
        _check_text(value)
        if not value.strip():
            raise _refuse("blank", "must not be empty or whitespace only")
    return value


def _profile(value: Any) -> Any:
    """The profile: not blank, and at most MAX_PROFILE_BYTES of UTF-8 (checked before anything else scans it)."""
    if isinstance(value, str):
        size = len(_check_text(value))
        if size > MAX_PROFILE_BYTES:
            raise _refuse(
                "profile_too_long",
                "must be at most {limit} bytes of UTF-8, got {size}",
                limit=MAX_PROFILE_BYTES,
                size=size,
            )
        if not value.strip():
            raise _refuse("blank", "must not be empty or whitespace only")
    return value


def _id_string(value: Any) -> str:
    """A string or an integer id as a string, at most MAX_ID_LENGTH characters, not empty."""
    if isinstance(value, bool):  # bool is an int subclass; True is not an id
        raise _refuse("product_id_type", "must be a string or an integer, not a boolean")
    if isinstance(value, int):
        # A bound on the bits first: str() of a huge integer is slow, and refused past 4300 digits.
        text = str(value) if value.bit_length() <= 4 * MAX_ID_LENGTH else ""
        if not text or len(text) > MAX_ID_LENGTH:
            raise _refuse(
                "product_id_too_long",
                "must be at most {limit} characters: an integer id has at most {limit} digits, its sign included",
                limit=MAX_ID_LENGTH,
            )
        return text
    if not isinstance(value, str):
        raise _refuse("product_id_type", "must be a string or an integer")
    if not value:
        raise _refuse("product_id_empty", "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise _refuse(
            "product_id_too_long",
            "must be at most {limit} characters, got {length}",
            limit=MAX_ID_LENGTH,
            length=len(value),
        )
    return value


def _product_id(value: Any) -> str:
    """A catalogue id: used verbatim (never trimmed), so one with whitespace at either end is refused."""
    text = _id_string(value)
    _check_text(text)
    if text != text.strip():
        raise _refuse(
            "product_id_whitespace",
            "must not start or end with whitespace (ids are used verbatim, never trimmed)"
            if text.strip()
            else "must not be empty or whitespace only",
        )
    return text


def _recommended_id(value: Any) -> str:
    """An id as the LLM wrote it: not in the catalogue is the ranking's business (unknown_id), not this model's."""
    text = _id_string(value)
    if not text.strip():
        raise _refuse("product_id_empty", "must not be empty")
    return text


ProductId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=ID_PATTERN,
        description=(
            "A string or an integer; an integer becomes its decimal string (so at most "
            f"{MAX_ID_LENGTH} digits). Used verbatim, never trimmed: an id that starts or ends "
            f"with whitespace is refused. Unique within the request; {_TEXT_RULE}."
        ),
        json_schema_extra={"type": ["string", "integer"]},
    ),
    BeforeValidator(_product_id),  # after the Field: it runs first, and the Field's rules stay the str's
]
RecommendedId = Annotated[str, Field(max_length=MAX_ID_LENGTH), BeforeValidator(_recommended_id)]
RequestKey = Annotated[
    str, Field(min_length=1, max_length=MAX_REQUEST_ID_LENGTH, pattern=TEXT_PATTERN), BeforeValidator(_text)
]
ModelName = Annotated[
    str, Field(min_length=1, max_length=MAX_MODEL_LENGTH, pattern=TEXT_PATTERN), BeforeValidator(_text)
]


class Product(BaseModel):
    """One candidate product of the catalogue.

    `product_id` is used verbatim, never trimmed: an id with whitespace at either end is
    refused, so " 1 " and "1" can never be two products that look the same.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: ProductId
    product_name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            pattern=NOT_BLANK_PATTERN,
            description=f"Shown to the customer as it is; not blank; {_TEXT_RULE}.",
        ),
        BeforeValidator(_not_blank),
    ]


class RankingRequest(BaseModel):
    """What a producer asks for: rank these products for this customer."""

    model_config = ConfigDict(extra="forbid")

    request_id: RequestKey | None = Field(
        default=None,
        description=f"Optional caller key: the same key and body enqueued twice give the same job; {_TEXT_RULE}.",
    )
    profile: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_PROFILE_BYTES,  # in characters: the real limit, in bytes, is checked by _profile
            pattern=NOT_BLANK_PATTERN,
            description=(
                f"Free text customer profile, at most {MAX_PROFILE_BYTES} bytes of UTF-8; not "
                f"blank; {_TEXT_RULE}."
            ),
        ),
        BeforeValidator(_profile),
    ]
    products: list[Product] = Field(min_length=1, max_length=MAX_PRODUCTS)
    top_k: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PRODUCTS,
        description="Stop after k items; at most the number of products.",
    )
    model: ModelName | None = Field(
        default=None, description=f"The LLM model to ask instead of the worker's default; {_TEXT_RULE}."
    )

    @field_validator("products")
    @classmethod
    def _unique_ids(cls, products: list[Product]) -> list[Product]:
        seen: set[str] = set()
        for index, product in enumerate(products):
            if product.product_id in seen:
                raise ValueError(f"product_id {product.product_id!r} repeats at index {index}")
            seen.add(product.product_id)
        return products

    @field_validator("top_k")
    @classmethod
    def _top_k_within_products(cls, top_k: int | None, info: ValidationInfo) -> int | None:
        products = info.data.get("products")  # absent if the products were refused: nothing to compare
        if top_k is not None and products is not None and top_k > len(products):
            raise _refuse(
                "top_k_too_large",
                "must be at most the number of products ({count})",
                count=len(products),
            )
        return top_k

    def catalogue(self) -> dict[str, str]:
        """product_id -> product_name, in the request's order."""
        return {p.product_id: p.product_name for p in self.products}


class Recommendation(BaseModel):
    """One element of the LLM's ranked array: which product comes next."""

    product_id: RecommendedId


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


# How a count is estimated when the server reports none: OpenAI's rule of thumb for English text.
CHARS_PER_TOKEN = 4
USAGE_ESTIMATE = f"{CHARS_PER_TOKEN} characters per token, of the prompt sent and the text received"


class Usage(BaseModel):
    """Tokens over every LLM call of a job; `estimated` names the counts that are not all the server's."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: list[Literal["prompt_tokens", "completion_tokens"]] = Field(default_factory=list)
    estimate: str | None = None  # how the estimated counts were made (USAGE_ESTIMATE)


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
