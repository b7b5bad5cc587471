"""Incremental extractor: validated items from a streamed JSON array, one per closed element.

This module owns turning a stream of text chunks (an LLM's token deltas) into validated
instances of any pydantic model, each emitted by the ``feed`` call that receives the closing
brace of its JSON object, whatever the chunk boundaries.

Finding the items array: it is the first JSON array, outside any JSON string, whose first
element is an object, that is a ``[`` followed (after optional whitespace) by ``{``.

- Text outside any JSON value ("prose": explanations, markdown fences) is not JSON, so quote
  characters in it mean nothing (``Here's the "best" list: [{...}]`` works), and a ``[`` in
  it that is not followed by ``{`` (``see [note] below``, ``[1, 2]``) is skipped.
- A ``{`` in prose opens a wrapping value (``{"recommendations": [...]}``, nested as deep as
  it likes). Until its brackets balance again, JSON strings are respected, so brackets inside
  them never count, and any array whose first element is not an object (``"tags": ["a"]``,
  ``[]``) is skipped. A prose ``{`` that is not JSON (``{name}``) ends at its ``}``.
- A ``[`` in prose followed by ``"`` opens an array of strings (``tags: ["a", "b [{c}]"]``): its
  strings are respected too, so a ``[{`` inside one is not the items array. A JSON string holds
  no raw line break and is followed by ``,``, ``]``, ``}`` or ``:``; a string of that array that
  breaks either rule was an odd quote in prose, not JSON, and the text after that quote is read
  again as prose (looking for no such array until the next line break, so the text is read
  twice at most). An odd quote therefore hides nothing.
- Everything after the items array closes is ignored, and costs nothing.

The price of not parsing prose: a prose ``[{`` that is not JSON (``use [{name}] here``) is taken
for the array, and an odd quote inside a prose ``{...}`` hides the rest of that value.

Inside the array, whitespace and commas separate elements (an extra comma makes no element;
a missing one between two objects is forgiven). An element starting with ``{`` is an object
and ends at its matching ``}``; it is validated once, with ``model_validate_json``. Any other
element (number, string, ``null``, array, stray text) ends before the next ``,`` or ``]``
outside strings and brackets, and is rejected as "not an object". Malformed structure:

- a closer that matches a bracket further down the element's stack closes everything up to
  it (``{"a": [1}`` ends at its ``}``); the element is rejected as mismatched;
- a closer that matches no open bracket of the object (``{"a": 1]``) ends the element there,
  rejected as mismatched, and the text up to the next ``,`` or ``]`` outside strings and
  brackets is skipped, so the stream resynchronises on the next element.

At the end of the stream (``close``), an element that was started but not closed is rejected as
"truncated" (its ``raw`` is what arrived, less trailing whitespace).

Work is linear in the text: every character is scanned once, by precompiled regular
expressions that jump over bracket-free text and whole strings; once in the array, text is not
scanned at all until a chunk holds a ``}`` or ``]``, the only characters that can close an
element or the array (so a non-object element, which a ``,`` ends, is reported with the next
``}`` or ``]``). Only the current element's text, and the unscanned text since the last ``}`` or
``]``, is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum, auto
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["Item", "ItemExtractor", "Rejected", "iter_items"]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Item(Generic[M]):
    """A validated element: its position in the array, its exact JSON text and the model instance."""

    index: int
    raw: str
    value: M


@dataclass(frozen=True, slots=True)
class Rejected:
    """An element that is not a valid item ("invalid") or that the stream cut off ("truncated")."""

    index: int
    raw: str
    reason: Literal["invalid", "truncated"]
    error: str


# Patterns are unrolled loops (x*(?:y x*)*) with possessive quantifiers: never backtracking, and
# about half the cost of the equivalent alternation in re's engine.
_STRING_BODY_RE = r'[^"\\]*+(?:\\.[^"\\]*+)*+'
# Whole strings and bracket-free text at once: a scan stops only at a bracket or at a string
# that does not close within the text it has.
_SKIP = re.compile(rf'[^"{{}}\[\]]*+(?:"{_STRING_BODY_RE}"[^"{{}}\[\]]*+)*+', re.DOTALL)
# The same for a non-object element, which a top-level comma ends.
_SKIP_VALUE = re.compile(rf'[^"{{}}\[\],]*+(?:"{_STRING_BODY_RE}"[^"{{}}\[\],]*+)*+', re.DOTALL)
# The rest of an open string: stops at its closing quote, at a backslash that ends the text
# (its escaped character is still to come), or at the end.
_STRING_BODY = re.compile(_STRING_BODY_RE, re.DOTALL)
_PROSE = re.compile(r"[\[{]")
# A prose array's text between its strings and brackets, and its strings, which hold no raw line break.
_LINE_TEXT = re.compile(r'[^"{}\[\]]*+')
_LINE_STRING_BODY = re.compile(r'[^"\\\n]*+(?:\\[^\n][^"\\\n]*+)*+')
_WHITESPACE = re.compile(r"[ \t\r\n]*+")
_ELEMENT_START = re.compile(r"[^ \t\r\n,]")
_WHITESPACE_CHARS = " \t\r\n"
_CLOSER = {"{": "}", "[": "]"}


class _Verdict(Enum):
    OPEN = auto()
    CLOSED = auto()
    NOT_JSON = auto()


# States of the scanner.
_PROSE_TEXT = 0  # before the array, outside any JSON value
_WRAPPER = 1  # inside a {...} value that may hold the array
_BRACKET = 2  # just after a "[": is its first element an object?
_BETWEEN = 3  # in the items array, between elements
_OBJECT = 4  # inside an object element
_VALUE = 5  # inside a non-object element
_RESYNC = 6  # skipping the rest of an element cut short by an unmatched closer
_DONE = 7  # the array has closed
_CLOSED = 8  # close() was called


class ItemExtractor(Generic[M]):
    """Push-style extractor: ``feed`` each chunk, then ``close`` at the end of the stream."""

    __slots__ = (
        "_after_string",
        "_broken",
        "_depth",
        "_escape",
        "_in_array",
        "_in_string",
        "_index",
        "_kept",
        "_mode",
        "_parts",
        "_pending",
        "_plain_line",
        "_prose_array",
        "_rescan",
        "_stack",
        "_validate_json",
    )

    def __init__(self, model: type[M]) -> None:
        self._validate_json = _json_validator(model)
        self._mode = _PROSE_TEXT
        self._in_array = False  # _BETWEEN <= _mode <= _RESYNC: the one test of feed's fast path
        self._depth = 0  # bracket depth inside a wrapping value
        self._stack: list[str] = []  # closers the current element still expects
        self._in_string = False
        self._escape = False  # a backslash ended the last scanned text, inside a string
        self._broken = False  # the current object has mismatched brackets
        self._parts: list[str] = []  # the current element's text, scanned
        self._pending: list[str] = []  # array text not scanned yet
        self._index = 0
        self._prose_array = False  # the value being skipped is a prose array of strings
        self._kept: list[str] = []  # an open string of it: its text, to read again if it is not JSON
        self._plain_line = False  # after such a string, no prose array is looked for until a line break
        self._rescan: str | None = None  # text to read again as prose, set by _line_array
        self._after_string = False  # a string of the prose array closed: a separator must follow

    @property
    def finished(self) -> bool:
        """True once the items array has closed (or the stream was closed): nothing more will come."""
        return self._mode >= _DONE

    def feed(self, chunk: str) -> list[Item[M] | Rejected]:
        """Scan one more chunk; return the elements it closed, in order."""
        if self._in_array:
            # Only "}" or "]" can close an element (or the array), so text without either just waits.
            # Non-object elements, which a "," ends, are thus reported at the next "}" or "]".
            if "}" not in chunk and "]" not in chunk:
                self._pending.append(chunk)
                return []
            pending = self._pending
            if pending:
                pending.append(chunk)
                chunk = "".join(pending)
                pending.clear()
            return self._array(chunk)
        if self._mode == _CLOSED:
            raise RuntimeError("feed() after close()")
        if self._mode == _DONE:
            return []
        return self._seek(chunk)

    def close(self) -> list[Item[M] | Rejected]:
        """End of stream: an element that was started but not closed is Rejected("truncated")."""
        out: list[Item[M] | Rejected] = []
        if self._in_array:
            text = "".join(self._pending)
            self._pending.clear()
            out = self._array(text)
            if self._mode in (_OBJECT, _VALUE):
                raw = "".join(self._parts).rstrip(_WHITESPACE_CHARS)
                out.append(Rejected(self._index, raw, "truncated", "stream ended inside element"))
        self._mode = _CLOSED
        self._in_array = False
        self._parts, self._pending, self._stack = [], [], []
        return out

    # Before the array.

    def _seek(self, text: str) -> list[Item[M] | Rejected]:
        pos, end = 0, len(text)
        while pos < end:
            mode = self._mode
            if mode == _PROSE_TEXT:
                pos = self._prose(text, pos)
            elif mode == _WRAPPER and self._prose_array:
                pos = self._line_array(text, pos)
                if self._rescan is not None:  # an odd quote, not JSON: read after it again
                    text, pos, self._rescan = self._rescan + text[pos:], 0, None
                    end = len(text)
            elif mode == _WRAPPER:
                pos = self._wrapper(text, pos)
            elif mode == _BRACKET:
                pos = self._bracket(text, pos)
            else:  # the array's first element starts at pos
                return self._array(text[pos:])
        return []

    def _prose(self, text: str, pos: int) -> int:
        match = _PROSE.search(text, pos)
        if self._plain_line:
            line_end = text.find("\n", pos)
            if line_end >= 0 and (match is None or line_end < match.start()):
                self._plain_line = False
        if match is None:
            return len(text)
        if text[match.start()] == "{":
            self._depth = 1
            self._mode = _WRAPPER
        else:
            self._mode = _BRACKET
        return match.end()

    def _wrapper(self, text: str, pos: int) -> int:
        if self._in_string:
            pos = self._finish_string(text, pos)
            if pos < 0:
                return len(text)
        pos = _SKIP.match(text, pos).end()  # type: ignore[union-attr]  # it matches the empty string
        if pos == len(text):
            return pos
        char = text[pos]
        if char == '"':
            self._enter_string(text, pos + 1)
            return len(text)
        self._skip_bracket(char)
        return pos + 1

    def _skip_bracket(self, char: str) -> None:
        """A bracket of a value being skipped: maybe the array, one deeper, or one out of it."""
        if char == "[":
            self._mode = _BRACKET
        elif char == "{":
            self._depth += 1
        else:
            self._depth -= 1
            if self._depth == 0:
                self._mode, self._prose_array = _PROSE_TEXT, False

    def _bracket(self, text: str, pos: int) -> int:
        pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
        if pos == len(text):
            return pos
        if text[pos] == "{":
            self._mode = _BETWEEN
            self._in_array = True
        elif self._depth:
            self._depth += 1  # an array inside the wrapper, but not the items array
            self._mode = _WRAPPER
        elif text[pos] == '"' and not self._plain_line:
            self._depth = 1  # a prose array of strings: skipped as a value, strings respected
            self._mode = _WRAPPER
            self._prose_array = True
        else:
            self._mode = _PROSE_TEXT
        return pos

    def _line_array(self, text: str, pos: int) -> int:
        """`_wrapper` for a prose array: each string closes on its line and a separator follows it.

        Text from a string's opening quote is kept until that holds, to be read again as prose if not.
        """
        mark = pos
        if self._in_string:
            pos, verdict = self._line_string(text, pos)
            if verdict is _Verdict.OPEN:
                self._kept.append(text[mark:])
                return len(text)
            if verdict is _Verdict.NOT_JSON:
                return self._not_json(text, mark, pos)
            self._in_string, self._after_string = False, True
        if self._after_string:
            pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
            if pos == len(text):
                self._kept.append(text[mark:])
                return pos
            if text[pos] not in ",]}:":
                return self._not_json(text, mark, pos)
            self._after_string, self._kept = False, []
        pos = _LINE_TEXT.match(text, pos).end()  # type: ignore[union-attr]
        if pos == len(text):
            return pos
        char = text[pos]
        if char == '"':  # a string that does not close in this text, or not on its line
            self._in_string = True
        else:
            self._skip_bracket(char)
        return pos + 1

    def _line_string(self, text: str, pos: int) -> tuple[int, _Verdict]:
        """Continue a prose array's open string: where it got to, and whether it is still open,
        closed (the position after its quote) or not JSON (the line break it met)."""
        if self._escape:
            if text[pos] == "\n":
                return pos, _Verdict.NOT_JSON
            self._escape = False
            pos += 1
        end = _LINE_STRING_BODY.match(text, pos).end()  # type: ignore[union-attr]
        if end == len(text):
            return end, _Verdict.OPEN
        if text[end] == '"':
            return end + 1, _Verdict.CLOSED
        if text[end] == "\n":
            return end, _Verdict.NOT_JSON
        if end + 1 == len(text):  # a backslash ends the text: it escapes the next chunk's first character
            self._escape = True
            return len(text), _Verdict.OPEN
        return end + 1, _Verdict.NOT_JSON  # a backslash before a line break

    def _not_json(self, text: str, start: int, stop: int) -> int:
        """The prose array is not JSON after all: back to prose, reading again from its string's quote."""
        self._rescan = "".join(self._kept) + text[start:stop]
        self._kept, self._in_string, self._escape, self._after_string = [], False, False, False
        self._mode, self._prose_array, self._depth = _PROSE_TEXT, False, 0
        self._plain_line = True
        return stop

    # In the array.

    def _array(self, text: str) -> list[Item[M] | Rejected]:
        out: list[Item[M] | Rejected] = []
        pos, end = 0, len(text)
        while pos < end:
            mode = self._mode
            if mode == _BETWEEN:
                pos = self._between(text, pos)
            elif mode == _OBJECT:
                pos = self._object(text, pos, out)
            elif mode == _DONE:
                break
            else:
                pos = self._value(text, pos, out)
        return out

    def _between(self, text: str, pos: int) -> int:
        match = _ELEMENT_START.search(text, pos)
        if match is None:
            return len(text)
        start = match.start()
        char = text[start]
        if char == "]":
            self._mode = _DONE
            self._in_array = False
            return len(text)
        if char == "{":
            self._mode = _OBJECT
            self._stack.append("}")
        else:
            self._mode = _VALUE
        return start

    def _object(self, text: str, pos: int, out: list[Item[M] | Rejected]) -> int:
        parts = self._parts
        # A new element's "{" is at pos, and already on the stack.
        close = self._scan_object(text, pos if parts else pos + 1)
        if close < 0:
            parts.append(text[pos:] if pos else text)
            return len(text)
        raw = text[pos:close]
        if parts:
            parts.append(raw)
            raw = "".join(parts)
            parts.clear()
        self._emit(raw, out)
        # Nothing after the last closer can close anything: it waits, unscanned, for the next one.
        if text.find("}", close) < 0 and text.find("]", close) < 0:
            if close < len(text):
                self._pending.append(text[close:])
            return len(text)
        return close

    def _emit(self, raw: str, out: list[Item[M] | Rejected]) -> None:
        self._mode = _BETWEEN
        if self._stack:  # ended by a closer that matches nothing: skip to the next element
            self._stack.clear()
            self._mode = _RESYNC
            out.append(Rejected(self._index, raw, "invalid", "mismatched brackets"))
        elif self._broken:
            out.append(Rejected(self._index, raw, "invalid", "mismatched brackets"))
        else:
            try:
                out.append(Item(self._index, raw, self._validate_json(raw)))
            except ValidationError as exc:
                out.append(Rejected(self._index, raw, "invalid", _summary(exc)))
        self._broken = False
        self._index += 1

    def _value(self, text: str, pos: int, out: list[Item[M] | Rejected]) -> int:
        end = self._scan_value(text, pos)
        report = self._mode == _VALUE
        if end < 0:
            if report:
                self._parts.append(text[pos:])
            return len(text)
        if report:
            raw = ("".join(self._parts) + text[pos:end]).rstrip(_WHITESPACE_CHARS)
            out.append(Rejected(self._index, raw, "invalid", "not an object"))
            self._index += 1
        self._parts.clear()
        self._stack.clear()
        self._mode = _BETWEEN  # which then reads the "," or "]" at ``end``
        return end

    # Scanning. Both scanners carry string state across calls and look at each character once
    # (but for the text of a string still open at the end, which _SKIP tries and _STRING_BODY takes).

    def _scan_object(self, text: str, pos: int) -> int:
        """Return the end of the element if it closes in ``text``, else -1."""
        if self._in_string:
            pos = self._finish_string(text, pos)
            if pos < 0:
                return -1
        stack = self._stack
        end = len(text)
        skip = _SKIP.match
        while True:
            pos = skip(text, pos).end()  # type: ignore[union-attr]
            if pos == end:
                return -1
            char = text[pos]
            pos += 1
            if char == '"':
                self._enter_string(text, pos)
                return -1
            if char == "{" or char == "[":
                stack.append(_CLOSER[char])
            elif char == stack[-1]:
                stack.pop()
                if not stack:
                    return pos
            else:
                self._broken = True
                # A closer that matches nothing ends the element with its stack still open.
                if not _pop_to(stack, char) or not stack:
                    return pos

    def _scan_value(self, text: str, pos: int) -> int:
        """Return the position of the "," or "]" that ends a non-object element, else -1."""
        if self._in_string:
            pos = self._finish_string(text, pos)
            if pos < 0:
                return -1
        stack = self._stack
        end = len(text)
        while True:
            pos = _SKIP_VALUE.match(text, pos).end()  # type: ignore[union-attr]
            if pos == end:
                return -1
            char = text[pos]
            if char == '"':
                self._enter_string(text, pos + 1)
                return -1
            if not stack and (char == "," or char == "]"):
                return pos
            if char == "{" or char == "[":
                stack.append(_CLOSER[char])
            elif char != ",":
                _pop_to(stack, char)  # a closer that matches nothing is just more invalid text
            pos += 1

    def _enter_string(self, text: str, pos: int) -> None:
        """A string opened before ``pos`` and does not close in ``text``."""
        self._in_string = True
        self._escape = _STRING_BODY.match(text, pos).end() < len(text)  # type: ignore[union-attr]

    def _finish_string(self, text: str, pos: int) -> int:
        """Continue an open string: the position after its closing quote, or -1 if still open."""
        if self._escape:
            self._escape = False
            pos += 1
        pos = _STRING_BODY.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text):
            return -1
        if text[pos] == "\\":
            self._escape = True
            return -1
        self._in_string = False
        return pos + 1


def _json_validator(model: type[M]) -> Callable[[str], M]:
    """``model.model_validate_json``, or, unless the model overrides it, the pydantic-core validator
    it calls: the wrapper costs about as much as the validation of a small item."""
    own = model.__mro__[: model.__mro__.index(BaseModel)]
    if any("model_validate_json" in vars(cls) for cls in own):
        return model.model_validate_json
    validate: Callable[[str], M] = model.__pydantic_validator__.validate_json
    return validate


def _pop_to(stack: list[str], closer: str) -> bool:
    """Close every bracket down to the nearest one ``closer`` matches; False if there is none."""
    for depth in range(len(stack) - 1, -1, -1):
        if stack[depth] == closer:
            del stack[depth:]
            return True
    return False


def _summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    messages = [
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" if error["loc"] else error["msg"]
        for error in errors[:3]
    ]
    if len(errors) > 3:
        messages.append(f"and {len(errors) - 3} more")
    return "; ".join(messages)


def iter_items(chunks: Iterable[str], model: type[M]) -> Iterator[Item[M] | Rejected]:
    """Yield each element's result as soon as the chunk that closes it has been read.

    The whole iterable is consumed even after the array closes, so a wrapping generator still
    sees its stream's end (an LLM stream's usage report comes last); those chunks cost nothing.
    """
    extractor = ItemExtractor(model)
    for chunk in chunks:
        results = extractor.feed(chunk)
        if results:
            yield from results
    yield from extractor.close()
