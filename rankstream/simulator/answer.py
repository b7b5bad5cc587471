"""Composing the answer's text: the ranked candidates, written in the shape the request asked for.

Also where the faults that spoil the text itself act: `garbage` (bad elements mixed in),
`truncate` (cut mid-element, finish_reason "length") and `numeric_ids` (ids as JSON numbers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .ranking import Ranked
from .shapes import Shape, resolve, schema_types

_NO_CANDIDATES_REPLY = (
    "I could not find any candidate products to rank in your message. Please list them between "
    "<candidates> and </candidates>, one JSON object per line."
)
_PROSE_INTRO = (
    "Based on the customer's profile, here are the products ranked from most to least relevant:\n\n"
)
_PROSE_OUTRO = "\n\nThe top picks match the customer's preferred brands and recent interests."
_GARBAGE_INVALID = '{"product_id":}'
_GARBAGE_NOT_OBJECT = "42"
_GARBAGE_UNKNOWN = '{"product_id":"no-such-id"}'
_NUMERIC = re.compile(r"0|-?[1-9][0-9]*")


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class _Pick:
    """A ranked candidate at its place (1-based) in the answer: what an item's fields describe."""

    item: Ranked
    rank: int


def _fill(schema: Mapping[str, Any], root: Mapping[str, Any], name: str, pick: _Pick | None) -> Any:
    """A simple value that satisfies a required property's schema (None: a top-level property)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    types = schema_types(schema, root) - {"null"}
    if "object" in types:
        props = schema.get("properties") or {}
        return {k: _fill(resolve(props.get(k), root), root, k, pick) for k in schema.get("required", [])}
    if "array" in types:
        return []
    if "boolean" in types:
        return False
    if types & {"integer", "number"} and "string" not in types:
        return pick.rank if name == "rank" and pick else 0
    if not types and "null" in schema_types(schema, root):
        return None
    if pick is None:
        return "ranked by relevance to the customer's profile"
    return pick.item.candidate.product_name if name == "product_name" else pick.item.reason


def _wants_integer_ids(shape: Shape) -> bool:
    props = shape.items.get("properties") or {}
    types = schema_types(resolve(props.get("product_id"), shape.root), shape.root)
    return bool(types & {"integer", "number"}) and "string" not in types


def _element(shape: Shape, pick: _Pick, numeric_ids: bool) -> str:
    pid = pick.item.candidate.product_id
    value: dict[str, Any] = {"product_id": int(pid) if numeric_ids and _NUMERIC.fullmatch(pid) else pid}
    props = shape.items.get("properties") or {}
    for key in shape.items.get("required", []):
        if key != "product_id":
            value[key] = _fill(resolve(props.get(key), shape.root), shape.root, key, pick)
    return compact(value)


def _with_garbage(elements: list[str]) -> list[str]:
    """Interleave one of each kind of bad element after the first real ones; all real ones stay."""
    garbage = [_GARBAGE_INVALID, _GARBAGE_NOT_OBJECT, _GARBAGE_UNKNOWN, elements[0]]
    mixed: list[str] = []
    for i, element in enumerate(elements):
        mixed.append(element)
        if i < len(garbage):
            mixed.append(garbage[i])
    return mixed + garbage[len(elements) :]


def _brackets(shape: Shape) -> tuple[str, str]:
    if shape.wrapper is None:
        return "[", "]"
    extras = "".join(f",{compact(k)}:{compact(_fill(s, shape.root, k, None))}" for k, s in shape.extras)
    return "{" + compact(shape.wrapper) + ":[", "]" + extras + "}"


def _cut(head: str, elements: list[str]) -> str:
    """The answer up to the middle of the middle element, as a length-limited model leaves it."""
    k = len(elements) // 2
    broken = elements[k][: max(1, len(elements[k]) // 2)]
    return head + "".join(e + "," for e in elements[:k]) + broken


def compose(shape: Shape, ranked: Sequence[Ranked], fault: str) -> tuple[str, str]:
    """The full answer text and its finish_reason ("stop" or "length")."""
    if not ranked:
        return _NO_CANDIDATES_REPLY, "stop"
    numeric = fault == "numeric_ids" or _wants_integer_ids(shape)
    elements = [_element(shape, _Pick(item, i), numeric) for i, item in enumerate(ranked, start=1)]
    if fault == "garbage":
        elements = _with_garbage(elements)
    head, tail = _brackets(shape)
    if shape.kind == "prose":
        head, tail = _PROSE_INTRO + "```json\n" + head, tail + "\n```" + _PROSE_OUTRO
    if fault == "truncate":
        return _cut(head, elements), "length"
    return head + ",".join(elements) + tail, "stop"
