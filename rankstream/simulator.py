"""The LLM simulator: an OpenAI-compatible chat-completions server that ranks products.

It owns everything an LLM does for rankstream when no OpenAI key is set, and what every test
talks to: reading the catalogue out of the worker's prompt, a deterministic relevance ranking
(`rank`), writing the answer in the shape the request asks for (json_schema, json_object, a
tool call, or chatty prose with a fenced array), splitting it into tokens and pacing them
like a hosted model (time to first token, tokens per second), switchable faults, and a log
of what it served (`/sim/requests`) that tests read.

It is a real HTTP server (FastAPI on uvicorn) for the real `openai` client, never a patched
function. `create_app` builds it, `serve` runs it in the foreground (`rankstream llm-sim`),
and `start_in_thread` runs it on a free port beside the caller (the demo and the tests).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Literal

import anyio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

FAULTS = (
    "none",
    "rate_limit",
    "server_error",
    "disconnect",
    "stall",
    "slow_first_token",
    "garbage",
    "truncate",
    "numeric_ids",
)
"""Every fault the simulator can inject; `SimConfig.fault` and `POST /sim/faults` take these."""

REQUEST_LOG_SIZE = 1000
MAX_TOKEN_CHARS = 6
_TOKEN_PIECE = 5
_GRACEFUL_SHUTDOWN_SECONDS = 2.0
_DROP_KEY = "rankstream.sim.drop_connection"


@dataclass
class SimConfig:
    """How the simulator behaves; `fault` is the default for every request."""

    ttft: float = 0.5
    tokens_per_second: float = 50.0
    fault: str = "none"
    model: str = "rankstream-sim"


# --------------------------------------------------------------------------------------------
# The catalogue and the profile, as the worker's prompt carries them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One product found between <candidates> and </candidates>."""

    product_id: str
    product_name: str


def _text_of(message: Any) -> str:
    """A message's text, whether `content` is a string or a list of content parts."""
    if not isinstance(message, Mapping):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def _search_order(messages: Sequence[Any]) -> list[str]:
    """The last user message first, then every message from the newest back."""
    texts = [_text_of(m) for m in reversed(messages)]
    users = [_text_of(m) for m in reversed(messages) if isinstance(m, Mapping) and m.get("role") == "user"]
    return users[:1] + texts


def _find_block(texts: Iterable[str], tag: str) -> str | None:
    pattern = re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL)
    for text in texts:
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def _candidate(obj: Any) -> Candidate | None:
    if not isinstance(obj, Mapping):
        return None
    pid, name = obj.get("product_id"), obj.get("product_name")
    if isinstance(pid, bool) or not isinstance(pid, str | int) or not isinstance(name, str):
        return None
    return Candidate(str(pid), name)


def _parse_candidates(block: str) -> list[Candidate]:
    """One JSON object per line; a whole JSON array is accepted too. Unparsable lines are skipped."""
    try:
        whole = json.loads(block)
        objects: list[Any] = whole if isinstance(whole, list) else [whole]
    except ValueError:
        objects = [_loads_or_none(line) for line in block.splitlines() if line.strip()]
    seen: set[str] = set()
    result: list[Candidate] = []
    for obj in objects:
        cand = _candidate(obj)
        if cand is not None and cand.product_id not in seen:
            seen.add(cand.product_id)
            result.append(cand)
    return result


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def read_prompt(messages: Sequence[Any]) -> tuple[str, list[Candidate]]:
    """The profile text and the candidates a chat request carries (both empty when absent)."""
    texts = _search_order(messages)
    block = _find_block(texts, "candidates")
    profile = _find_block(texts, "profile") or ""
    return profile, _parse_candidates(block) if block is not None else []


# --------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------

BRAND_WEIGHT = 3
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# Words that say nothing about what a product is ("latest", "premium") or are filler.
_STOP_WORDS = """
a an and are as at be best by for from in is it latest my new no not of on or our the to top
with your high premium quality good great star model design easy use long interested
"""
_STOP = frozenset(_STOP_WORDS.split())
# A product name rarely says its category ("MacBook" never says "laptop"); this small lexicon
# lets the names meet the profile's words.
_IMPLIES: dict[str, tuple[str, ...]] = {
    "macbook": ("laptop", "electronic"),
    "notebook": ("laptop", "electronic"),
    "chromebook": ("laptop", "electronic"),
    "laptop": ("electronic",),
    "headphone": ("electronic",),
    "earbud": ("headphone", "electronic"),
    "earphone": ("headphone", "electronic"),
    "headset": ("headphone", "electronic"),
    "watch": ("electronic",),
    "smartwatch": ("smart", "watch", "electronic"),
    "kindle": ("book", "e-reader", "electronic"),
    "e-reader": ("book", "electronic"),
    "ereader": ("book", "e-reader", "electronic"),
    "novel": ("book",),
    "author": ("book",),
    "gopro": ("camera", "electronic"),
    "camera": ("electronic",),
    "tablet": ("electronic",),
    "ipad": ("tablet", "electronic"),
    "iphone": ("phone", "electronic"),
    "smartphone": ("phone", "electronic"),
    "phone": ("electronic",),
    "speaker": ("electronic",),
    "tv": ("electronic",),
    "yoga": ("fitness", "equipment"),
    "dumbbell": ("fitness", "equipment"),
    "kettlebell": ("fitness", "equipment"),
    "treadmill": ("fitness", "equipment"),
    "sneaker": ("shoe",),
    "runner": ("shoe",),
    "trainer": ("shoe",),
    "jacket": ("clothing",),
    "hoodie": ("clothing",),
    "hooded": ("clothing",),
}
_NEGATIVE = re.compile(r"not interested|dislike|avoid|negative|do not like|don't like", re.IGNORECASE)
_PAIR = re.compile(r"([^,;:{}\[\]]+):\s*([^,;{}\[\]]+)")


def _stem(word: str) -> str:
    """Plural to singular, crudely but consistently (laptops → laptop, activities → activity)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    """Every normalised word, in order: what brand names are matched against."""
    return [_stem(w) for w in _WORD.findall(text.lower())]


def _terms(text: str) -> list[str]:
    """The distinct meaningful words, in order: no stop words, no bare numbers."""
    kept = (w for w in _words(text) if w not in _STOP and not w.isdigit() and len(w) > 1)
    return list(dict.fromkeys(kept))


def _expand(terms: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(t for term in terms for t in (term, *_IMPLIES.get(term, ()))))


@dataclass(frozen=True)
class _Brand:
    name: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class _Profile:
    preferred: tuple[_Brand, ...]
    disliked: tuple[_Brand, ...]
    interests: Mapping[str, int]


def _list_items(value: str) -> list[str]:
    """`[Apple, AllBirds]` or `{Laptop: 5 stars}` → the names, without brackets or values."""
    items = re.split(r"[,;|]", value.strip().strip("[]{}()"))
    return [name for item in items if (name := item.split(":")[0].strip(" \"'[]{}"))]


def _brands(names: Iterable[str]) -> list[_Brand]:
    return [_Brand(name, tuple(words)) for name in names if (words := _words(name))]


def _parse_profile(text: str) -> _Profile:
    preferred: list[_Brand] = []
    disliked: list[_Brand] = []
    interests: Counter[str] = Counter()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = (key.lower(), value) if sep else ("", line)
        rejected = [name.strip() for name, answer in _PAIR.findall(value) if _NEGATIVE.search(answer)]
        if rejected or _NEGATIVE.search(key):
            disliked += _brands(rejected or _list_items(value))
        elif "brand" in key:
            preferred += _brands(_list_items(value))
        else:
            interests.update(_terms(" ".join(_list_items(value))))
    return _Profile(tuple(preferred), tuple(disliked), interests)


def _contains(words: Sequence[str], phrase: Sequence[str]) -> bool:
    n = len(phrase)
    return any(tuple(words[i : i + n]) == tuple(phrase) for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class Ranked:
    """One candidate with its place in the ranking and why."""

    candidate: Candidate
    position: int  # in the catalogue: what ties fall back to
    score: int
    brand: str | None
    matched: tuple[str, ...]
    disliked: bool

    @property
    def reason(self) -> str:
        """A short phrase for `reason`-like fields of structured answers."""
        if self.disliked:
            return "a brand the customer is not interested in"
        parts = [f"preferred brand {self.brand}"] if self.brand else []
        if self.matched:
            parts.append("matches " + ", ".join(self.matched[:3]))
        return "; ".join(parts) or "a general pick"


def _score(profile: _Profile, cand: Candidate, position: int) -> Ranked:
    words = _words(cand.product_name)
    brand = next((b.name for b in profile.preferred if _contains(words, b.words)), None)
    disliked = any(_contains(words, b.words) for b in profile.disliked)
    matched = tuple(t for t in _expand(_terms(cand.product_name)) if t in profile.interests)
    score = (BRAND_WEIGHT if brand else 0) + sum(profile.interests[t] for t in matched)
    return Ranked(cand, position, score, brand, matched, disliked)


def rank(profile: str, candidates: Sequence[Candidate]) -> list[Ranked]:
    """Order the candidates by a deterministic relevance heuristic, best first.

    The profile is read line by line as `Key: value`, loosely:

    - a line whose key mentions "brand" (`Preferred Brands: [Apple, AllBirds, Bench]`) lists
      preferred brands;
    - a `Name: answer` pair whose answer is negative ("Not Interested", "dislike", "avoid"), as in
      `Responses to Previous Recommendations: {Philips: Not Interested}`, or a line whose key is
      negative, lists brands the customer does not want;
    - every other line contributes its words (values only, not keys) as interests. Words are
      lower-cased and singularised (laptops → laptop); stop words ("best", "latest", ...) and bare
      numbers are dropped. An interest's weight is the number of lines that mention it, so
      "laptop" (purchases, ratings and searches) weighs 3 and "yoga" 1. For `Key: value` pairs
      only the names count (`{Laptop: 5 stars}` → laptop).

    A product's terms are the words of its name plus what a small lexicon says they imply
    (macbook → laptop, electronic; kindle → book; yoga → fitness, equipment; ...). Its score is
    `BRAND_WEIGHT` (3) if its name mentions a preferred brand, plus the weights of the distinct
    interests among its terms. Products whose name mentions an unwanted brand go last, whatever
    their score. Ties keep the catalogue order, so the ranking is fully deterministic.
    """
    parsed = _parse_profile(profile)
    scored = [_score(parsed, cand, i) for i, cand in enumerate(candidates)]
    return sorted(scored, key=lambda r: (r.disliked, -r.score, r.position))


# --------------------------------------------------------------------------------------------
# The answer's shape, from the request
# --------------------------------------------------------------------------------------------

Kind = Literal["json", "tool", "prose"]


@dataclass(frozen=True)
class _Shape:
    kind: Kind
    wrapper: str | None = "recommendations"  # None: a bare array
    items: Mapping[str, Any] = field(default_factory=dict)
    extras: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # other required top-level properties
    root: Mapping[str, Any] = field(default_factory=dict)  # where local $refs point
    tool_name: str = ""


def _resolve(node: Any, root: Mapping[str, Any]) -> Mapping[str, Any]:
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


def _types(schema: Mapping[str, Any], root: Mapping[str, Any]) -> set[str]:
    declared = schema.get("type")
    found = {declared} if isinstance(declared, str) else set(declared or [])
    for alt in [*schema.get("anyOf", []), *schema.get("oneOf", [])]:
        found |= _types(_resolve(alt, root), root)
    return found


def _schema_shape(schema: Any, kind: Kind, tool_name: str = "") -> _Shape:
    root = schema if isinstance(schema, Mapping) else {}
    top = _resolve(root, root)
    if "array" in _types(top, root):
        return _Shape(kind, None, _resolve(top.get("items"), root), (), root, tool_name)
    props: Mapping[str, Any] = top.get("properties") or {}
    key = next((k for k, v in props.items() if "array" in _types(_resolve(v, root), root)), None)
    if key is None:
        return _Shape(kind, "recommendations", {}, (), root, tool_name)
    required = [k for k in top.get("required", []) if k != key and k in props]
    extras = tuple((k, _resolve(props[k], root)) for k in required)
    return _Shape(kind, key, _resolve(props[key].get("items"), root), extras, root, tool_name)


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


def _shape_of(body: Mapping[str, Any]) -> _Shape:
    tool = _chosen_tool(body)
    if tool is not None:
        return _schema_shape(tool[1], "tool", tool[0])
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt, Mapping) else None
        return _schema_shape(spec.get("schema") if isinstance(spec, Mapping) else None, "json")
    if kind == "json_object":
        return _Shape("json")
    return _Shape("prose", None)


# --------------------------------------------------------------------------------------------
# The answer's text
# --------------------------------------------------------------------------------------------

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


def _compact(value: Any) -> str:
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
    types = _types(schema, root) - {"null"}
    if "object" in types:
        props = schema.get("properties") or {}
        return {k: _fill(_resolve(props.get(k), root), root, k, pick) for k in schema.get("required", [])}
    if "array" in types:
        return []
    if "boolean" in types:
        return False
    if types & {"integer", "number"} and "string" not in types:
        return pick.rank if name == "rank" and pick else 0
    if not types and "null" in _types(schema, root):
        return None
    if pick is None:
        return "ranked by relevance to the customer's profile"
    return pick.item.candidate.product_name if name == "product_name" else pick.item.reason


def _wants_integer_ids(shape: _Shape) -> bool:
    props = shape.items.get("properties") or {}
    types = _types(_resolve(props.get("product_id"), shape.root), shape.root)
    return bool(types & {"integer", "number"}) and "string" not in types


def _element(shape: _Shape, pick: _Pick, numeric_ids: bool) -> str:
    pid = pick.item.candidate.product_id
    value: dict[str, Any] = {"product_id": int(pid) if numeric_ids and _NUMERIC.fullmatch(pid) else pid}
    props = shape.items.get("properties") or {}
    for key in shape.items.get("required", []):
        if key != "product_id":
            value[key] = _fill(_resolve(props.get(key), shape.root), shape.root, key, pick)
    return _compact(value)


def _with_garbage(elements: list[str]) -> list[str]:
    """Interleave one of each kind of bad element after the first real ones; all real ones stay."""
    garbage = [_GARBAGE_INVALID, _GARBAGE_NOT_OBJECT, _GARBAGE_UNKNOWN, elements[0]]
    mixed: list[str] = []
    for i, element in enumerate(elements):
        mixed.append(element)
        if i < len(garbage):
            mixed.append(garbage[i])
    return mixed + garbage[len(elements) :]


def _brackets(shape: _Shape) -> tuple[str, str]:
    if shape.wrapper is None:
        return "[", "]"
    extras = "".join(f",{_compact(k)}:{_compact(_fill(s, shape.root, k, None))}" for k, s in shape.extras)
    return "{" + _compact(shape.wrapper) + ":[", "]" + extras + "}"


def _cut(head: str, elements: list[str]) -> str:
    """The answer up to the middle of the middle element, as a length-limited model leaves it."""
    k = len(elements) // 2
    broken = elements[k][: max(1, len(elements[k]) // 2)]
    return head + "".join(e + "," for e in elements[:k]) + broken


def _compose(shape: _Shape, ranked: Sequence[Ranked], fault: str) -> tuple[str, str]:
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


_TOKEN = re.compile(r"\w+|\s+|[^\w\s]+")


def tokenize(text: str) -> list[str]:
    """Model-like tokens: words, spaces and punctuation runs, none longer than MAX_TOKEN_CHARS."""
    tokens: list[str] = []
    for piece in _TOKEN.findall(text):
        if len(piece) <= MAX_TOKEN_CHARS:
            tokens.append(piece)
        else:
            tokens.extend(piece[i : i + _TOKEN_PIECE] for i in range(0, len(piece), _TOKEN_PIECE))
    return tokens


# --------------------------------------------------------------------------------------------
# Run-time state: the fault switch and the request log
# --------------------------------------------------------------------------------------------


@dataclass
class _Record:
    """One chat request as `GET /sim/requests` reports it; times are `time.time()` floats.

    `first_token_at`: when the first token went out (unstreamed: when the answer did).
    `completed`: the whole response went out (a 429/500 fault's error body counts).
    `client_closed`: the client went away before that; generation stopped there.
    A `disconnect` fault leaves both false: the simulator dropped the connection itself.
    """

    id: str
    model: str
    stream: bool
    fault: str
    received_at: float
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens_planned: int = 0
    tokens_sent: int = 0
    completed: bool = False
    client_closed: bool = False

    def finish(self, *, completed: bool = False, client_closed: bool = False) -> None:
        """Set the outcome and its time together, so a reader of the log never sees one without the other."""
        if self.finished_at is None:
            self.completed, self.client_closed, self.finished_at = completed, client_closed, time.time()


class _FaultSwitch:
    """The configured default fault, overridden for the next N requests (or until changed)."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.override: str | None = None
        self.remaining: int | None = None

    def set(self, fault: str, count: int | None) -> None:
        self.override, self.remaining = fault, count

    def take(self) -> str:
        if self.override is None:
            return self.default
        fault = self.override
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.override, self.remaining = None, None
        return fault

    def snapshot(self) -> dict[str, Any]:
        return {"default": self.default, "fault": self.override or self.default, "count": self.remaining}


@dataclass
class _State:
    config: SimConfig
    faults: _FaultSwitch
    log: deque[_Record] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set when the server shuts down


# --------------------------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------------------------

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class _Plan:
    """Everything one generation needs, decided before the first byte goes out."""

    id: str
    created: int
    model: str
    stream: bool
    include_usage: bool
    fault: str
    tokens: list[str]
    finish_reason: str
    tool: tuple[str, str] | None  # (call id, function name) when answering with a tool call
    prompt_tokens: int
    started: float  # event-loop clock at the request's arrival
    ttft: float
    tokens_per_second: float

    def usage(self, completion_tokens: int) -> dict[str, int]:
        total = self.prompt_tokens + completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total,
        }


class _Chunks:
    """Pre-serialised `chat.completion.chunk` templates: one json.dumps per token, no models."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        usage = ',"usage":null' if plan.include_usage else ""
        self._envelope = (
            f'data: {{"id":"{plan.id}","object":"chat.completion.chunk","created":{plan.created},'
            f'"model":{json.dumps(plan.model)},"system_fingerprint":"fp_rankstream_sim",'
        )
        self._head = self._envelope + '"choices":[{"index":0,"delta":'
        self._tail = ',"logprobs":null,"finish_reason":null}]' + usage + "}\n\n"
        self._token_head = self._head + (
            '{"tool_calls":[{"index":0,"function":{"arguments":' if plan.tool else '{"content":'
        )
        self._token_tail = ("}}]}" if plan.tool else "}") + self._tail

    def opening(self) -> bytes:
        """The first chunk: the role, and for a tool call its id, type and name."""
        if self.plan.tool is None:
            delta = '{"role":"assistant","content":"","refusal":null}'
        else:
            call_id, name = self.plan.tool
            call = {
                "index": 0,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            delta = '{"role":"assistant","content":null,"tool_calls":[' + _compact(call) + '],"refusal":null}'
        return (self._head + delta + self._tail).encode()

    def token(self, token: str) -> bytes:
        return (self._token_head + json.dumps(token) + self._token_tail).encode()

    def closing(self, sent: int) -> bytes:
        """The finish chunk, the usage chunk if asked for, and [DONE]."""
        finish = self._head + '{},"logprobs":null,"finish_reason":' + json.dumps(self.plan.finish_reason)
        out = finish + "}]" + (',"usage":null' if self.plan.include_usage else "") + "}\n\n"
        if self.plan.include_usage:
            usage = _compact(self.plan.usage(sent))
            out += self._envelope + '"choices":[],"usage":' + usage + "}\n\n"
        return out.encode() + _DONE


def _completion(plan: _Plan) -> dict[str, Any]:
    """The non-streaming `chat.completion` body."""
    text = "".join(plan.tokens)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if plan.tool is not None:
        call = {"id": plan.tool[0], "type": "function", "function": {"name": plan.tool[1], "arguments": text}}
        message.update(content=None, tool_calls=[call])
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
    return {
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": "fp_rankstream_sim",
        "choices": [choice],
        "usage": plan.usage(len(plan.tokens)),
    }


def _error(status: int, message: str, kind: str, code: str | None = None, **extra: Any) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": extra.pop("param", None), "code": code}}
    return JSONResponse(body, status_code=status, headers=extra.pop("headers", None))


def _bad_request(message: str, param: str | None = None) -> JSONResponse:
    return _error(400, message, "invalid_request_error", param=param)


# --------------------------------------------------------------------------------------------
# One generation on the wire
# --------------------------------------------------------------------------------------------


class _Generation(Response):
    """Sends one planned answer, paced, while watching for the client to go away.

    The schedule is absolute (token i at `started + ttft + i / tokens_per_second`) so the time
    spent sleeping and writing never accumulates into drift.
    """

    def __init__(
        self, plan: _Plan, record: _Record, drop: Callable[[], None] | None, closing: asyncio.Event
    ) -> None:
        super().__init__(media_type="text/event-stream" if plan.stream else "application/json")
        self.plan = plan
        self.record = record
        self._drop = drop
        self._closing = closing
        self._dropping = False
        self._client_gone = anyio.Event()
        self._loop_time = asyncio.get_running_loop().time

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_client, receive, group.cancel_scope)
                group.start_soon(self._watch_shutdown, group.cancel_scope)
                await (self._stream(send) if self.plan.stream else self._whole(send))
                group.cancel_scope.cancel()
        finally:
            self.record.finish()  # dropped on purpose, or cancelled by a server shutdown

    async def _watch_client(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._client_gone.set()
        if self.record.finished_at is None and not self._dropping:
            self.record.finish(client_closed=True)
            scope.cancel()

    async def _watch_shutdown(self, scope: anyio.CancelScope) -> None:
        """A server going away drops its connections; waiting for stalled ones would never end."""
        await self._closing.wait()
        await self._drop_connection()
        scope.cancel()

    def _due(self, index: int) -> float:
        return self.plan.started + self.plan.ttft + index / self.plan.tokens_per_second

    async def _until_token(self, index: int) -> None:
        delay = self._due(index) - self._loop_time()
        # Behind schedule, still yield once, so one stream cannot starve the others.
        await asyncio.sleep(max(delay, 0))

    def _tokens_due(self, sent: int, limit: int) -> int:
        """How many tokens should be out by now: at least one more than `sent`, at most `limit`."""
        elapsed = self._loop_time() - self._due(0)
        return max(sent + 1, min(limit, int(elapsed * self.plan.tokens_per_second) + 1))

    async def _stream(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": self._with_request_id(_SSE_HEADERS)}
        )
        fault, tokens = self.plan.fault, self.plan.tokens
        if fault == "slow_first_token":
            await anyio.sleep_forever()
        chunks = _Chunks(self.plan)
        stop_at = len(tokens) // 2 if fault in ("disconnect", "stall") else len(tokens)
        sent = 0
        while sent < stop_at:
            await self._until_token(sent)
            due = self._tokens_due(sent, stop_at)
            # Tokens already due (the loop fell behind) go out in one write: still one SSE event
            # each, but one syscall, so a busy simulator catches up instead of drifting.
            batch = b"".join(chunks.token(token) for token in tokens[sent:due])
            if sent == 0:
                self.record.first_token_at = time.time()
                batch = chunks.opening() + batch
            await send(_body(batch))
            sent = self.record.tokens_sent = due
        if fault == "stall":
            await anyio.sleep_forever()
        if fault == "disconnect":
            await self._drop_connection()
            return
        await send(_body(chunks.closing(len(tokens)), more_body=False))
        self.record.finish(completed=True)

    async def _whole(self, send: Send) -> None:
        fault, count = self.plan.fault, len(self.plan.tokens)
        if fault in ("stall", "slow_first_token"):
            await anyio.sleep_forever()
        if fault == "disconnect":
            await self._until_token(count // 2)
            await self._drop_connection()
            return
        await self._until_token(max(count - 1, 0))
        body = json.dumps(_completion(self.plan)).encode()
        headers = self._with_request_id([(b"content-type", b"application/json")])
        self.record.first_token_at = time.time()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(_body(body, more_body=False))
        self.record.tokens_sent = count
        self.record.finish(completed=True)

    def _with_request_id(self, base: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [*base, (b"x-request-id", self.plan.id.encode())]

    async def _drop_connection(self) -> None:
        """Close the TCP connection mid-answer, so the client sees a broken response, not an end.

        Waiting for the server to notice the close keeps it from reporting an unfinished
        response as an application error. Without access to the transport (another ASGI
        server), returning without finishing makes the server close the connection itself.
        """
        self._dropping = True
        if self._drop is not None:
            self._drop()
            with anyio.move_on_after(1.0):
                await self._client_gone.wait()


def _body(data: bytes, more_body: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more_body}


def _transport_closer(send: Send) -> Callable[[], None] | None:
    """uvicorn's `send` is a bound method of an object holding the connection's transport."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    close = getattr(transport, "close", None)
    return close if callable(close) else None


class _SimApp(FastAPI):
    """FastAPI that remembers, per request, how to drop the TCP connection (the disconnect fault)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_DROP_KEY] = _transport_closer(send)
        await super().__call__(scope, receive, send)


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


def _validate(body: Any) -> JSONResponse | None:
    """An OpenAI-style 400 for a body the real API would refuse; None when it is fine."""
    if not isinstance(body, dict):
        return _bad_request("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _bad_request("Missing required parameter: 'messages'.", "messages")
    if body.get("n") not in (None, 1):
        return _bad_request("The simulator only supports n=1.", "n")
    if not isinstance(body.get("stream", False), bool | None):
        return _bad_request("'stream' must be a boolean.", "stream")
    for name in ("max_tokens", "max_completion_tokens"):
        limit = body.get(name)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            return _bad_request(f"'{name}' must be a positive integer.", name)
    return None


async def _read_body(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _bad_request("We could not parse the JSON body of your request.")
    return _validate(body) or body


def _token_limit(body: Mapping[str, Any]) -> int | None:
    limits = [v for v in (body.get("max_tokens"), body.get("max_completion_tokens")) if isinstance(v, int)]
    return min(limits) if limits else None


def _requested_model(body: Mapping[str, Any], config: SimConfig) -> str:
    """Echo the requested model name, as a deployment alias would; the configured one otherwise."""
    model = body.get("model")
    return model if isinstance(model, str) and model else config.model


def _plan(body: Mapping[str, Any], config: SimConfig, fault: str, started: float) -> _Plan:
    messages = body["messages"]
    profile, candidates = read_prompt(messages)
    shape = _shape_of(body)
    text, finish = _compose(shape, rank(profile, candidates), fault)
    tokens = tokenize(text)
    limit = _token_limit(body)
    if limit is not None and len(tokens) > limit:
        tokens, finish = tokens[:limit], "length"
    tool = ("call_" + secrets.token_hex(12), shape.tool_name) if shape.kind == "tool" and candidates else None
    options = body.get("stream_options")
    return _Plan(
        id="chatcmpl-" + secrets.token_hex(12),
        created=int(time.time()),
        model=_requested_model(body, config),
        stream=bool(body.get("stream")),
        include_usage=isinstance(options, Mapping) and bool(options.get("include_usage")),
        fault=fault,
        tokens=tokens,
        finish_reason="tool_calls" if tool and finish == "stop" else finish,
        tool=tool,
        prompt_tokens=max(1, sum(len(_text_of(m)) for m in messages) // 4),
        started=started,
        ttft=config.ttft,
        tokens_per_second=config.tokens_per_second,
    )


def _refusal(fault: str) -> JSONResponse | None:
    """The HTTP error a fault answers with instead of a completion, if it is that kind of fault."""
    if fault == "rate_limit":
        return _error(
            429,
            "Rate limit reached for requests (simulated). Please try again in 1s.",
            "rate_limit_error",
            "rate_limit_exceeded",
            headers={"retry-after": "1", "retry-after-ms": "1000", "x-ratelimit-remaining-requests": "0"},
        )
    if fault == "server_error":
        return _error(
            500, "The server had an error while processing your request (simulated).", "server_error"
        )
    return None


async def _chat_completions(request: Request, state: _State) -> Response:
    started, received_at = asyncio.get_running_loop().time(), time.time()
    body = await _read_body(request)
    if isinstance(body, JSONResponse):
        return body
    fault = state.faults.take()
    plan = _plan(body, state.config, fault, started)
    record = _Record(plan.id, plan.model, plan.stream, fault, received_at, tokens_planned=len(plan.tokens))
    state.log.append(record)
    refusal = _refusal(fault)
    if refusal is not None:
        record.tokens_planned = 0
        record.finish(completed=True)
        return refusal
    return _Generation(plan, record, request.scope.get(_DROP_KEY), state.closing)


async def _set_faults(request: Request, state: _State) -> JSONResponse:
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    fault = body.get("fault") if isinstance(body, dict) else None
    count = body.get("count") if isinstance(body, dict) else None
    if fault not in FAULTS:
        return _bad_request(f"'fault' must be one of {', '.join(FAULTS)}.", "fault")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        return _bad_request("'count' must be a positive integer or null.", "count")
    state.faults.set(fault, count)
    return JSONResponse(state.faults.snapshot())


def _add_routes(app: FastAPI, state: _State) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": state.config.model, "object": "model", "created": 0, "owned_by": "rankstream"}
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _chat_completions(request, state)

    @app.get("/sim/faults")
    async def get_faults() -> dict[str, Any]:
        return state.faults.snapshot()

    @app.post("/sim/faults")
    async def set_faults(request: Request) -> JSONResponse:
        return await _set_faults(request, state)

    @app.get("/sim/requests")
    async def requests_log() -> list[dict[str, Any]]:
        return [asdict(record) for record in state.log]

    @app.delete("/sim/requests")
    async def clear_requests_log() -> dict[str, int]:
        cleared = len(state.log)
        state.log.clear()
        return {"cleared": cleared}


def create_app(config: SimConfig) -> FastAPI:
    """The simulator as an ASGI app: `/v1/models`, `/v1/chat/completions` and `/sim/*`."""
    if config.fault not in FAULTS:
        raise ValueError(f"unknown fault {config.fault!r}; choose one of {', '.join(FAULTS)}")
    if config.tokens_per_second <= 0 or config.ttft < 0:
        raise ValueError("tokens_per_second must be positive and ttft not negative")
    app = _SimApp(title="rankstream LLM simulator", docs_url=None, redoc_url=None, openapi_url=None)
    state = _State(config, _FaultSwitch(config.fault))
    app.state.sim_closing = state.closing
    _add_routes(app, state)
    return app


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn that first tells the simulator's open generations to end, so shutdown is prompt."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        closing = getattr(getattr(self.config.app, "state", None), "sim_closing", None)
        if isinstance(closing, asyncio.Event):
            closing.set()
        await super().shutdown(sockets=sockets)


def _server(config: SimConfig, **options: Any) -> _Server:
    return _Server(
        uvicorn.Config(
            create_app(config),
            lifespan="off",
            timeout_graceful_shutdown=int(_GRACEFUL_SHUTDOWN_SECONDS),
            **options,
        )
    )


def serve(host: str, port: int, config: SimConfig) -> None:
    """Run the simulator in the foreground until interrupted (`rankstream llm-sim`)."""
    _server(config, host=host, port=port).run()


def _url_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


class RunningSim:
    """A simulator serving from a daemon thread; `stop()` (or leaving the `with`) shuts it down."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.port = port
        self.url = f"http://{_url_host(host)}:{port}"

    @property
    def base_url(self) -> str:
        """What `openai.OpenAI(base_url=...)` takes."""
        return self.url + "/v1"

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the LLM simulator on port {self.port} did not stop within {timeout} s")

    def __enter__(self) -> RunningSim:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    """Bind before the server starts, so port 0 is resolved and cannot be taken meanwhile.

    The protocol must be IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets,
    and without it every response waits ~40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _wait_until_up(sim: RunningSim, server: uvicorn.Server, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the LLM simulator exited while starting; see its log")
        if server.started:
            try:
                with opener.open(sim.base_url + "/models", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.01)  # polling interval while uvicorn starts
    sim.stop()
    raise TimeoutError(f"the LLM simulator did not answer within {timeout} s")


def start_in_thread(
    config: SimConfig, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0
) -> RunningSim:
    """Serve the simulator from a daemon thread (port 0: a free one); returns once it answers."""
    sock = _bind(host, port)
    # Embedded: leave the host process's logging configuration alone, and stay quiet.
    server = _server(config, log_config=None, log_level="warning", access_log=False)
    bound_port = sock.getsockname()[1]
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"rankstream-sim:{bound_port}", daemon=True
    )
    thread.start()
    sim = RunningSim(server, thread, host, bound_port)
    _wait_until_up(sim, server, thread, timeout)
    return sim
