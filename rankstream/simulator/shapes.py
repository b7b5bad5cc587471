"""The answer's shape, from the request: which JSON the model is asked for, and how it is sent.

A tool (the one `tool_choice` names, else the first) is answered with a call whose arguments
follow its parameters schema; `response_format` json_schema with that schema; json_object with
`{"recommendations": [...]}`; anything else with prose around a fenced JSON array. A schema is
read for where the array of items is (the root, or the first array property), what each item
requires, and the other required top-level properties, following local `$ref`s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["json", "tool", "prose"]


@dataclass(frozen=True)
class Shape:
    kind: Kind
    wrapper: str | None = "recommendations"  # None: a bare array
    items: Mapping[str, Any] = field(default_factory=dict)
    extras: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # other required top-level properties
    root: Mapping[str, Any] = field(default_factory=dict)  # where local $refs point
    tool_name: str = ""


def resolve(node: Any, root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow local `$ref`s (`#/$defs/Item`), as pydantic-generated schemas use them."""
    for _ in range(32):  # a bound, because a schema may refer to itself
        if not isinstance(node, Mapping):
            return {}
        ref = node.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        node = target
    return {}


def schema_types(schema: Mapping[str, Any], root: Mapping[str, Any]) -> set[str]:
    declared = schema.get("type")
    found = {declared} if isinstance(declared, str) else set(declared or [])
    for alt in [*schema.get("anyOf", []), *schema.get("oneOf", [])]:
        found |= schema_types(resolve(alt, root), root)
    return found


def _schema_shape(schema: Any, kind: Kind, tool_name: str = "") -> Shape:
    root = schema if isinstance(schema, Mapping) else {}
    top = resolve(root, root)
    if "array" in schema_types(top, root):
        return Shape(kind, None, resolve(top.get("items"), root), (), root, tool_name)
    props: Mapping[str, Any] = top.get("properties") or {}
    key = next((k for k, v in props.items() if "array" in schema_types(resolve(v, root), root)), None)
    if key is None:
        return Shape(kind, "recommendations", {}, (), root, tool_name)
    required = [k for k in top.get("required", []) if k != key and k in props]
    extras = tuple((k, resolve(props[k], root)) for k in required)
    return Shape(kind, key, resolve(props[key].get("items"), root), extras, root, tool_name)


def _chosen_tool(body: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The function the model is to call: the one `tool_choice` names, else the first."""
    tools = [t.get("function") for t in body.get("tools") or [] if isinstance(t, Mapping)]
    functions = [f for f in tools if isinstance(f, Mapping) and isinstance(f.get("name"), str)]
    choice = body.get("tool_choice")
    if not functions or choice == "none":
        return None
    named = choice.get("function") if isinstance(choice, Mapping) else None
    wanted = named.get("name") if isinstance(named, Mapping) else None
    chosen = next((f for f in functions if f["name"] == wanted), functions[0])
    return chosen["name"], chosen.get("parameters")


def shape_of(body: Mapping[str, Any]) -> Shape:
    tool = _chosen_tool(body)
    if tool is not None:
        return _schema_shape(tool[1], "tool", tool[0])
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt, Mapping) else None
        return _schema_shape(spec.get("schema") if isinstance(spec, Mapping) else None, "json")
    if kind == "json_object":
        return Shape("json")
    return Shape("prose", None)
