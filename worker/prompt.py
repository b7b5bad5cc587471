"""The prompt: what the LLM is asked, and the JSON shape its answer must take.

The model writes only product ids (names come from the catalogue), so it spends fewer tokens
and the first item arrives sooner. The response schema comes from the item model and pins
product_id to the catalogue's ids.

The format, which the LLM simulator reads back (rankstream/simulator/prompt.py):
a system message, then one user message holding `<profile>\nPROFILE\n</profile>`, then
`<candidates>\n` + one JSON object per line, `{"product_id": ..., "product_name": ...}`, in
the request's order + `\n</candidates>`, then the instruction. So that nothing a caller sends
can end a block early, a tag inside the profile has its `<` written as `&lt;`, and a
candidate's JSON escapes `<` and the Unicode line separators (U+2028, U+2029, U+0085).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from rankstream.codes import ResponseFormat
from rankstream.models import RankingRequest, Recommendation

ARRAY_FIELD = "recommendations"
TOOL_NAME = "rank_products"

SYSTEM = (
    "You rank the candidate products of an online shop for one customer. "
    'Answer with JSON only: {"recommendations": [{"product_id": "..."}, ...]}, the most relevant '
    "product first, each candidate at most once, every product_id copied verbatim from the candidates."
)


_TAG = re.compile(r"</?(?:profile|candidates)>", re.IGNORECASE)
_ESCAPES = str.maketrans({"<": "\\u003c", "\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def candidate_line(product_id: str, product_name: str) -> str:
    """One candidate as a line of JSON that no name or id can break out of."""
    text = json.dumps({"product_id": product_id, "product_name": product_name}, ensure_ascii=False)
    return text.translate(_ESCAPES)


def messages(request: RankingRequest) -> list[dict[str, str]]:
    candidates = "\n".join(candidate_line(p.product_id, p.product_name) for p in request.products)
    profile = _TAG.sub(lambda tag: "&lt;" + tag.group(0)[1:], request.profile)
    how_many = f"the {request.top_k} most relevant" if request.top_k else "all"
    user = (
        f"<profile>\n{profile}\n</profile>\n\n"
        f"<candidates>\n{candidates}\n</candidates>\n\n"
        f"Rank {how_many} candidates for this customer."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def item_schema(request: RankingRequest, item_model: type[BaseModel] = Recommendation) -> dict[str, Any]:
    """The item model's JSON schema, tightened for strict structured outputs."""
    schema = _strict_schema(item_model)
    properties = {
        **schema["properties"],
        "product_id": {"type": "string", "enum": [p.product_id for p in request.products]},
    }
    return {**schema, "properties": properties}


@lru_cache(maxsize=16)
def _strict_schema(item_model: type[BaseModel]) -> dict[str, Any]:
    # pydantic builds a schema in about 0.2 ms: once per model, not once per job.
    return _strict(item_model.model_json_schema())


def answer_schema(request: RankingRequest) -> dict[str, Any]:
    """The whole answer: {"recommendations": [item, ...]}."""
    return {
        "type": "object",
        "properties": {ARRAY_FIELD: {"type": "array", "items": item_schema(request)}},
        "required": [ARRAY_FIELD],
        "additionalProperties": False,
    }


def response_format(request: RankingRequest) -> dict[str, Any]:
    schema = answer_schema(request)
    return {"type": "json_schema", "json_schema": {"name": "ranking", "strict": True, "schema": schema}}


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Strict mode wants every property required, no extras, and no keywords it does not know."""
    properties = {name: {"type": spec.get("type", "string")} for name, spec in schema["properties"].items()}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def chat_request(
    request: RankingRequest, model: str, form: ResponseFormat = ResponseFormat.JSON_SCHEMA
) -> dict[str, Any]:
    """The keyword arguments of chat.completions.create, without `stream`, asking in `form`.

    json_schema and tools carry the schema themselves; json_object and text carry it in the
    system message, so that the answer has the same shape whichever form a server accepts.
    """
    chat: dict[str, Any] = {
        "model": model,
        "messages": messages(request),
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    if form in (ResponseFormat.JSON_SCHEMA, ResponseFormat.AUTO):
        chat["response_format"] = response_format(request)
    elif form is ResponseFormat.TOOLS:
        function = {
            "name": TOOL_NAME,
            "description": "Rank the candidates",
            "parameters": answer_schema(request),
        }
        chat["tools"] = [{"type": "function", "function": function}]
        chat["tool_choice"] = {"type": "function", "function": {"name": TOOL_NAME}}
        chat["messages"][0]["content"] += f" Answer by calling {TOOL_NAME}."
    else:
        schema = json.dumps(answer_schema(request), ensure_ascii=False, separators=(",", ":"))
        chat["messages"][0]["content"] += f" The JSON follows this JSON Schema: {schema}"
        if form is ResponseFormat.JSON_OBJECT:
            chat["response_format"] = {"type": "json_object"}
    return chat
