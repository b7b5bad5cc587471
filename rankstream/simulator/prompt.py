"""Reading the catalogue and the customer's profile out of a chat request's messages.

This is one half of a contract whose other half is `worker/prompt.py`, which writes the
prompt; the format is written down here, and `tests/test_simulator.py::TestThePromptContract`
builds real prompts with `worker.prompt.chat_request` and checks they read back exactly.

The format, as the worker writes it (one user message after a system message)::

    <profile>
    {the profile, verbatim}
    </profile>

    <candidates>
    {"product_id": "1", "product_name": "Apple MacBook Air (2023)"}
    {"product_id": "2", "product_name": "Sony WH-1000XM4 Wireless Headphones"}
    </candidates>

    Rank all candidates for this customer.

- `<profile>` ... `</profile>` holds the profile as free text. The profile is everything
  between the tags, including the line break the worker writes after `<profile>` and the one
  before `</profile>`; `rank` reads it line by line, so those blank edges are harmless.
- `<candidates>` ... `</candidates>` holds one JSON object per line, each with `product_id`
  (a string; an integer is accepted and becomes its decimal string, a boolean is not) and
  `product_name` (a string). Other keys are ignored. Lines that are blank, not JSON, or not
  such an object are skipped; a repeated product_id keeps its first line. The whole block may
  instead be one JSON array of such objects (or one object); that is tried first.
- Tags are matched literally, case-sensitively: the first `<tag>` in a text, up to the first
  `</tag>` after it. Nothing is unescaped here; the writer sees to it that nothing a caller
  sends can end a block early. In the profile, a `<profile>`, `</profile>`, `<candidates>` or
  `</candidates>` tag (in any case) has its `<` written as `&lt;`, so the profile read back
  holds `&lt;/profile>` where the caller wrote `</profile>`. In a candidate line, `<` is
  written as the JSON escape `\\u003c`, which `json.loads` reads back as `<`: an id or name
  containing `</candidates>` keeps its line. A prompt written by other means, with raw tags,
  has the format's limits: a profile containing `</profile>` is cut there, one containing a
  whole `<candidates>...</candidates>` block is read as the catalogue instead of the real one,
  and a candidate line containing `</candidates>` ends the block early.
- Lines are split with `str.splitlines`, which also breaks at U+2028, U+2029 and U+0085. The
  worker writes those as JSON escapes (`\\u2028`, `\\u2029`, `\\u0085`) in a candidate line, so
  an id or name containing one keeps its candidate and reads back exact; written raw (by
  other means), they split the line and lose that candidate (unless it is the only one: a
  single object parses as a whole block).
- Where it looks: each tag is searched for separately, first in the last user message, then
  in every message from the newest back to the oldest (system messages included); the first
  message holding a complete `<tag>...</tag>` wins. A message's text is its `content` string,
  or the `text` of its content parts joined by newlines.

A request without a profile ranks against an empty one; without candidates, the simulator
answers that it found nothing to rank.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """One product found between <candidates> and </candidates>."""

    product_id: str
    product_name: str


def text_of(message: Any) -> str:
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
    texts = [text_of(m) for m in reversed(messages)]
    users = [text_of(m) for m in reversed(messages) if isinstance(m, Mapping) and m.get("role") == "user"]
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
