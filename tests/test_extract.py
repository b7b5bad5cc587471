"""Specification of worker.extract, the incremental extractor, grouped by what it promises."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from worker.extract import Item, ItemExtractor, Rejected, iter_items


class Rec(BaseModel):
    product_id: str
    score: int | None = None


Result = Item[Rec] | Rejected


def run(chunks: str | Sequence[str]) -> list[Result]:
    """Feed the chunks (a str is one chunk), then close."""
    extractor = ItemExtractor(Rec)
    results: list[Result] = []
    for chunk in [chunks] if isinstance(chunks, str) else chunks:
        results += extractor.feed(chunk)
    return results + extractor.close()


def summary(results: Sequence[Result]) -> list[tuple[Any, ...]]:
    """What a result says, comparable with ==."""
    return [
        ("item", r.index, r.raw, r.value) if isinstance(r, Item) else (r.reason, r.index, r.raw, r.error)
        for r in results
    ]


def items(text: str) -> list[tuple[int, str]]:
    """(index, product_id) of the valid items, feeding the text in 3-character chunks."""
    chunks = [text[i : i + 3] for i in range(0, len(text), 3)]
    return [(r.index, r.value.product_id) for r in run(chunks) if isinstance(r, Item)]


def kinds_of(results: Sequence[Result]) -> list[tuple[int, str]]:
    """(index, "item" or the reject reason) of every result."""
    return [(r.index, "item" if isinstance(r, Item) else r.reason) for r in results]


def kinds(text: str) -> list[tuple[int, str]]:
    return kinds_of(run(text))


ONE_TWO = '[{"product_id": "1"}, {"product_id": "2"}]'


# Finding the array.


class TestFindingTheArray:
    def test_a_bare_array(self) -> None:
        assert items(ONE_TWO) == [(0, "1"), (1, "2")]

    def test_prose_before_and_after_is_ignored(self) -> None:
        assert items(f"Sure! Here is the ranking:\n\n{ONE_TWO}\n\nHope it helps.") == [(0, "1"), (1, "2")]

    def test_quotes_in_prose_open_no_string(self) -> None:
        assert items(f'Here\'s the "best" list: {ONE_TWO}') == [(0, "1"), (1, "2")]
        assert items(f'An odd quote " here: {ONE_TWO}') == [(0, "1"), (1, "2")]

    def test_a_bracket_in_prose_not_followed_by_an_object_is_skipped(self) -> None:
        text = 'see [note] below, and [1, 2]: [{"product_id": "x"}]'
        assert items(text) == [(0, "x")]

    def test_whitespace_between_bracket_and_brace_is_allowed_across_chunks(self) -> None:
        assert summary(run(["[", "\n  ", "\t", '{"product_id": "1"}', "\n]"])) == summary(
            run('[{"product_id": "1"}]')
        )

    def test_markdown_fence(self) -> None:
        assert items(f"```json\n{ONE_TWO}\n```") == [(0, "1"), (1, "2")]

    def test_wrapping_object(self) -> None:
        assert items(f'{{"recommendations": {ONE_TWO}}}') == [(0, "1"), (1, "2")]

    def test_wrapper_nested_deeper_inside_a_fence(self) -> None:
        text = f'Result:\n```json\n{{"data": {{"count": 2, "items": {ONE_TWO}}}}}\n```'
        assert items(text) == [(0, "1"), (1, "2")]

    def test_strings_in_the_wrapper_are_respected(self) -> None:
        text = '{"note": "a [ { ] bracket", "quote": "say \\"[{\\"", "items": [{"product_id": "1"}]}'
        assert items(text) == [(0, "1")]

    def test_arrays_whose_first_element_is_not_an_object_are_skipped(self) -> None:
        text = '{"tags": ["a", "[{"], "ids": [1, {"x": 2}], "items": [{"product_id": "1"}]}'
        assert items(text) == [(0, "1")]

    def test_empty_arrays_are_skipped(self) -> None:
        assert items('{"none": [], "items": [{"product_id": "1"}]}') == [(0, "1")]
        assert items('Nothing: []. Now: [ {"product_id": "1"}]') == [(0, "1")]

    def test_in_an_array_of_arrays_the_inner_array_holds_the_objects(self) -> None:
        assert items('[[{"product_id": "1"}], [{"product_id": "2"}]]') == [(0, "1")]

    def test_braces_in_prose_that_are_not_json_close_again(self) -> None:
        assert items('Ranking for {customer}: [{"product_id": "1"}]') == [(0, "1")]

    def test_only_the_first_items_array_counts(self) -> None:
        assert items(f'{ONE_TWO} and again [{{"product_id": "3"}}]') == [(0, "1"), (1, "2")]

    def test_no_array_gives_nothing(self) -> None:
        assert run('Sorry, I cannot rank these. {"error": "no"} [1, 2]') == []


class TestAnArrayOfStringsInProse:
    """DESIGN.md: the first array outside any string. A prose ``["...", ...]`` has strings too."""

    def test_a_bracket_brace_inside_its_string_is_not_the_array(self) -> None:
        assert run('Tags: ["use [{name}] here", "b"]. I cannot rank these.') == []

    def test_the_real_array_after_it_is_found(self) -> None:
        text = f'Tags: ["use [{{name}}] here", "b"], then: {ONE_TWO}'
        assert all(items_in_pieces(text, size) == [(0, "1"), (1, "2")] for size in (1, 2, 3, 5, len(text)))

    def test_escaped_quotes_inside_its_strings_are_respected(self) -> None:
        assert items(f'["say \\"[{{x}}\\" twice", "w"] {ONE_TWO}') == [(0, "1"), (1, "2")]

    def test_an_object_array_inside_it_is_the_array(self) -> None:
        assert items('["a", [{"product_id": "5"}]]') == [(0, "5")]

    def test_an_odd_quote_hides_the_real_array_no_further_than_its_line(self) -> None:
        for text in (
            f'I said ["oops, an odd quote\n{ONE_TWO}',
            f'A ["bad\nline"] and then {ONE_TWO}',
            f'["escaped line break \\\n {ONE_TWO}',
        ):
            assert all(
                items_in_pieces(text, size) == [(0, "1"), (1, "2")] for size in (1, 2, 3, 7, len(text))
            ), text

    def test_after_an_odd_quote_its_line_is_read_as_prose(self) -> None:
        # The odd quote's string runs on; read again as prose, the line's own [{ is the array.
        assert items(f'odd ["quote then {ONE_TWO} on one line') == [(0, "1"), (1, "2")]


def items_in_pieces(text: str, size: int) -> list[tuple[int, str]]:
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    return [(r.index, r.value.product_id) for r in run(chunks) if isinstance(r, Item)]


# Elements.


class TestElements:
    def test_nested_objects_and_arrays(self) -> None:
        raw = '{"product_id": "1", "why": {"tags": ["a", {"b": [1, 2]}], "n": {}}, "list": [[], [{}]]}'
        [result] = run(f"[{raw}]")
        assert isinstance(result, Item)
        assert result.raw == raw

    def test_strings_with_brackets_braces_quotes_and_escapes(self) -> None:
        raw = r'{"product_id": "a } ] [ { \" \\", "note": "\\\" }", "k\"}": "\/\b\f\n\r\t"}'
        [result] = run(f"[{raw}]")
        assert isinstance(result, Item)
        assert result.raw == raw
        assert result.value.product_id == 'a } ] [ { " \\'

    def test_a_backslash_ending_a_chunk_escapes_the_next_chunks_first_character(self) -> None:
        text = r'{"note": "x\"[{", "items": [{"product_id": "a}\"}"}, "b]\\", {"product_id": "c"}]}'
        whole = summary(run(text))
        assert [r[0] for r in whole] == ["item", "invalid", "item"]
        for cut in [i + 1 for i, char in enumerate(text) if char == "\\"]:
            # Cut right after the backslash, which ends either the chunk that opens the string or
            # a later one that only continues it.
            assert summary(run([text[:cut], text[cut:]])) == whole
            assert summary(run([text[: cut - 2], text[cut - 2 : cut], text[cut:]])) == whole

    def test_unicode_escapes_and_surrogate_pairs(self) -> None:
        raw = r'{"product_id": "\ud83d\ude00 \u00e9 \u005d\u007d"}'
        [result] = run(f"[{raw}]")
        assert isinstance(result, Item)
        assert result.raw == raw
        assert result.value.product_id == "😀 é ]}"

    def test_raw_is_exact_and_has_no_surrounding_whitespace(self) -> None:
        raw = '{ "product_id" : "1" ,\n  "score":2 }'
        assert summary(run(f"[ \n {raw} \n , 7 \n ]")) == [
            ("item", 0, raw, Rec(product_id="1", score=2)),
            ("invalid", 1, "7", "not an object"),
        ]

    def test_a_non_object_element_is_rejected_and_the_stream_goes_on(self) -> None:
        text = '[{"product_id": "1"}, 5, "a, ] }", null, [1, {"a": [2]}], {"product_id": "6"}]'
        assert summary(run(text))[1:5] == [
            ("invalid", 1, "5", "not an object"),
            ("invalid", 2, '"a, ] }"', "not an object"),
            ("invalid", 3, "null", "not an object"),
            ("invalid", 4, '[1, {"a": [2]}]', "not an object"),
        ]
        assert items(text) == [(0, "1"), (5, "6")]

    def test_invalid_json_is_rejected_and_the_stream_goes_on(self) -> None:
        results = run('[{"product_id": "1"}, {"product_id": }, {"product_id": "3"}]')
        assert kinds_of(results) == [(0, "item"), (1, "invalid"), (2, "item")]
        assert results[1].raw == '{"product_id": }'
        assert isinstance(results[1], Rejected) and "Invalid JSON" in results[1].error

    def test_a_validation_failure_is_rejected_with_a_short_message(self) -> None:
        [result, after] = run('[{"product_id": 7, "score": "high"}, {"product_id": "2"}]')
        assert isinstance(result, Rejected) and result.reason == "invalid"
        assert (
            result.error == "product_id: Input should be a valid string; "
            "score: Input should be a valid integer, unable to parse string as an integer"
        )
        assert isinstance(after, Item)

    def test_a_closer_matching_a_deeper_bracket_closes_the_element_as_mismatched(self) -> None:
        assert summary(run('[{"a": [1, 2}, {"product_id": "2"}]')) == [
            ("invalid", 0, '{"a": [1, 2}', "mismatched brackets"),
            ("item", 1, '{"product_id": "2"}', Rec(product_id="2")),
        ]

    def test_a_closer_matching_nothing_ends_the_element_and_the_rest_is_skipped(self) -> None:
        assert summary(run('[{"a": {"b": 1]}, "skip", {"product_id": "2"}]')) == [
            ("invalid", 0, '{"a": {"b": 1]', "mismatched brackets"),
            ("invalid", 1, '"skip"', "not an object"),
            ("item", 2, '{"product_id": "2"}', Rec(product_id="2")),
        ]

    def test_extra_commas_make_no_element_and_a_missing_one_is_forgiven(self) -> None:
        assert items('[{"product_id": "1"},, {"product_id": "2"} {"product_id": "3"},]') == [
            (0, "1"),
            (1, "2"),
            (2, "3"),
        ]

    def test_an_unfinished_object_is_truncated_at_close(self) -> None:
        assert summary(run('[{"product_id": "1"}, {"product_id": "2", "note": "cut ')) == [
            ("item", 0, '{"product_id": "1"}', Rec(product_id="1")),
            ("truncated", 1, '{"product_id": "2", "note": "cut', "stream ended inside element"),
        ]

    def test_an_unfinished_non_object_is_truncated_at_close(self) -> None:
        assert kinds('[{"product_id": "1"}, 12, 13') == [(0, "item"), (1, "invalid"), (2, "truncated")]

    def test_an_unclosed_array_with_no_open_element_truncates_nothing(self) -> None:
        assert kinds('[{"product_id": "1"}, ') == [(0, "item")]

    def test_text_after_the_array_is_ignored(self) -> None:
        extractor = ItemExtractor(Rec)
        assert len(extractor.feed(ONE_TWO[:-1])) == 2
        assert not extractor.finished
        assert extractor.feed("]") == []
        assert extractor.finished
        assert extractor.feed('[{"product_id": "3"}] {"x": [{') == []
        assert extractor.close() == []

    def test_feed_after_close_raises_and_close_again_is_harmless(self) -> None:
        extractor = ItemExtractor(Rec)
        extractor.feed('[{"product_id": "1"')
        assert kinds_of(extractor.close()) == [(0, "truncated")]
        assert extractor.close() == []
        with pytest.raises(RuntimeError):
            extractor.feed("}]")

    def test_results_are_frozen(self) -> None:
        [result] = run('[{"product_id": "1"}]')
        with pytest.raises(AttributeError):
            result.index = 3  # type: ignore[misc]

    def test_any_model_works_and_an_overridden_model_validate_json_is_honoured(self) -> None:
        class Upper(BaseModel):
            name: str
            tags: list[str] = []

            @classmethod
            def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Upper:
                value = super().model_validate_json(json_data, **kwargs)
                return value.model_copy(update={"name": value.name.upper()})

        results = list(iter_items(['[{"name": "a", "tags": ["x"]}', "]"], Upper))
        assert [r.value for r in results if isinstance(r, Item)] == [Upper(name="A", tags=["x"])]


# Same-call emission: an element comes out of the feed call that receives its closing brace.


class TestSameCallEmission:
    def test_fed_char_by_char_each_item_comes_with_its_closing_brace(self) -> None:
        raws = ['{"product_id": "1", "x": {"y": "}"}}', '{"product_id": }', '{"product_id": "3"}']
        text = 'Ok: {"items": [' + ", ".join(raws) + "]}"
        extractor = ItemExtractor(Rec)
        seen = {}
        for offset, char in enumerate(text):
            for result in extractor.feed(char):
                seen[result.index] = offset
        assert extractor.close() == []
        assert seen == {index: text.index(raw) + len(raw) - 1 for index, raw in enumerate(raws)}

    def test_nothing_is_emitted_before_the_closing_brace(self) -> None:
        extractor = ItemExtractor(Rec)
        assert extractor.feed('[{"product_id": "1"') == []
        assert extractor.feed(', "score": 3') == []
        assert summary(extractor.feed("}")) == [
            ("item", 0, '{"product_id": "1", "score": 3}', Rec(product_id="1", score=3))
        ]


# Laziness.


class TestLaziness:
    def test_iter_items_yields_the_first_item_before_the_stream_ends(self) -> None:
        consumed = []

        def stream() -> Iterator[str]:
            for chunk in ['{"items": [', '{"product_id": "1"}', ", ", '{"product_id": "2"}', "]}", "\n"]:
                consumed.append(chunk)
                yield chunk

        results = iter_items(stream(), Rec)
        first = next(results)
        assert isinstance(first, Item) and first.value.product_id == "1"
        assert len(consumed) == 2
        assert [r.index for r in results] == [1]
        assert len(consumed) == 6  # read to the end even after the array closed

    def test_iter_items_reports_truncation_at_the_end(self) -> None:
        assert kinds_of(list(iter_items(iter(['[{"product_id": "1"}, {"pro']), Rec))) == [
            (0, "item"),
            (1, "truncated"),
        ]


# Linear work: ten times the text costs about ten times as much, never a hundred.


def _best_time(text: str, step: int) -> float:
    chunks = [text[i : i + step] for i in range(0, len(text), step)]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        extractor = ItemExtractor(Rec)
        for chunk in chunks:
            extractor.feed(chunk)
        extractor.close()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda n: '[{"product_id": "' + "a}]" * n + '"}]', id="closers-in-one-long-string"),
        pytest.param(lambda n: "[" + '{"a": ' * n + "1" + "}" * n + "]", id="deep-nesting"),
        pytest.param(lambda n: "[" + ", ".join(['{"product_id": "1"}'] * n) + "]", id="many-elements"),
        pytest.param(lambda n: "[{" + "}]" * n, id="closers-after-the-array"),
        pytest.param(lambda n: "Prose with [brackets] " * n + "[{}]", id="long-prose"),
    ],
)
def test_work_is_linear_in_the_text(make: Any) -> None:
    small, large = _best_time(make(1000), 1), _best_time(make(10000), 1)
    assert large / small < 30, f"10x the text took {large / small:.0f}x the time"


# Properties.

# Without "[" or "{", prose can hold no array and open no wrapper, so the items array is the one generated.
PROSE = st.text(st.characters(exclude_characters="[{", codec="utf-8"), max_size=30)
# Any text, or text dense in what a scanner could mistake for structure.
TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.text(
    st.sampled_from('[]{}"\\,: a'), max_size=12
)
SEPARATORS = st.sampled_from([",", ", ", ",\n  ", " ,\n", ",\t"])
SPACE = st.sampled_from(["", " ", "\n", "\n  ", "\t"])


@dataclass(frozen=True)
class Element:
    raw: str
    kind: str  # "item", or "invalid" for anything else
    value: Rec | None = None


@st.composite
def dumped(draw: st.DrawFn, value: Any) -> str:
    """JSON text of value, in one of several styles."""
    styles: list[dict[str, Any]] = [{}, {"indent": 2}, {"separators": (",", ":")}, {"ensure_ascii": False}]
    style = draw(st.sampled_from(styles))
    return json.dumps(value, **style)


@st.composite
def valid_elements(draw: st.DrawFn) -> Element:
    value = Rec(product_id=draw(TEXT), score=draw(st.none() | st.integers(-(2**53), 2**53)))
    data = value.model_dump(exclude_none=draw(st.booleans()))
    return Element(draw(dumped(data)), "item", value)


@st.composite
def failing_elements(draw: st.DrawFn) -> Element:
    """Objects that parse but fail validation."""
    data = draw(
        st.sampled_from(
            [
                {"score": 1},
                {"product_id": 5},
                {"product_id": None},
                {"product_id": ["a"]},
                {"product_id": True},
            ]
        )
        | st.builds(lambda t: {"product_id": "x", "score": "abc" + t}, TEXT)
    )
    return Element(draw(dumped(data)), "invalid")


BAD_SYNTAX = [
    '{"product_id": }',
    '{product_id: "x"}',
    "{'product_id': 'x'}",
    '{"product_id" "x"}',
    '{"product_id": "x",}',
    '{"product_id": "x" "score": 1}',
    '{"product_id": tru}',
    '{"a": [1, 2}',
    '{"a": {"b": [}}',
    "{}",
    '{"product_id": "a\\" }"  1}',
]


@st.composite
def broken_elements(draw: st.DrawFn) -> Element:
    """Not valid JSON, but ending at their last "}" (balanced, or closed by the mismatch rule)."""
    raw = draw(st.sampled_from(BAD_SYNTAX) | st.builds(lambda s: "{" + json.dumps(s) + "}", TEXT))
    return Element(raw.strip(), "invalid")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=2),
    max_leaves=6,
)


@st.composite
def non_object_elements(draw: st.DrawFn) -> Element:
    value = draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
    return Element(draw(dumped(value)), "invalid")


OBJECT_ELEMENTS = valid_elements() | failing_elements() | broken_elements()
ANY_ELEMENT = OBJECT_ELEMENTS | non_object_elements()

WRAPPER_FIELDS = st.lists(
    st.sampled_from(['"count": 3', '"tags": ["a", "[{"]', '"empty": []', '"meta": {"x": [1, {"y": 2}]}'])
    | st.builds(lambda s: '"note": ' + json.dumps(s), st.text(st.sampled_from('ab[]{}"\\, :'), max_size=10)),
    max_size=3,
)


@dataclass(frozen=True)
class Document:
    text: str
    elements: list[tuple[int, Element]]  # (offset of the element's first char, element)


@st.composite
def documents(draw: st.DrawFn) -> Document:
    """Prose, maybe a fence and a wrapper (one or two levels deep), the items array, then anything."""
    elements = [draw(OBJECT_ELEMENTS), *draw(st.lists(ANY_ELEMENT, max_size=6))]
    head = draw(PROSE)
    tail = ""
    if draw(st.booleans()):
        head += "\n```json\n"
        tail = "\n```" + tail
    for _ in range(draw(st.integers(0, 2))):
        fields = draw(WRAPPER_FIELDS)
        head += "{" + "".join(f + ", " for f in fields) + '"items": '
        tail = "}" + tail
    text = head + "[" + draw(SPACE)
    placed = []
    for number, element in enumerate(elements):
        if number:
            text += draw(SEPARATORS) + draw(SPACE)
        placed.append((len(text), element))
        text += element.raw
    text += draw(SPACE) + "]" + tail + draw(st.text(max_size=20))
    return Document(text, placed)


def expected(document: Document) -> list[tuple[int, str, str, Rec | None]]:
    return [(index, e.raw, e.kind, e.value) for index, (_, e) in enumerate(document.elements)]


def outcome(results: Sequence[Result]) -> list[tuple[int, str, str, Rec | None]]:
    return [
        (r.index, r.raw, "item", r.value) if isinstance(r, Item) else (r.index, r.raw, r.reason, None)
        for r in results
    ]


@st.composite
def split(draw: st.DrawFn, text: str) -> list[str]:
    """The text cut at random places (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=max(1, len(text) // 2))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSONISH = st.text(st.sampled_from('[]{}",:\\ \nau0'), max_size=60)


class TestProperties:
    @PROPERTY
    @given(st.data(), documents().map(lambda d: d.text) | JSONISH | documents().map(lambda d: d.text[:-7]))
    def test_chunk_boundaries_never_change_the_results(self, data: st.DataObject, text: str) -> None:
        chunks = data.draw(split(text))
        assert summary(run(chunks)) == summary(run(text))

    @PROPERTY
    @given(documents())
    def test_generated_documents_come_out_exactly_as_expected(self, document: Document) -> None:
        assert outcome(run(document.text)) == expected(document)

    @PROPERTY
    @given(st.data(), documents())
    def test_each_object_comes_out_of_the_feed_holding_its_closing_brace(
        self, data: st.DataObject, document: Document
    ) -> None:
        chunks = data.draw(split(document.text))
        extractor = ItemExtractor(Rec)
        emitted_in: dict[int, int] = {}
        for number, chunk in enumerate(chunks):
            for result in extractor.feed(chunk):
                emitted_in[result.index] = number
        extractor.close()
        chunk_ends = list(itertools.accumulate(map(len, chunks)))
        for index, (start, element) in enumerate(document.elements):
            if element.raw.startswith("{"):
                closing = start + len(element.raw) - 1
                holder = next(n for n, end in enumerate(chunk_ends) if end > closing)
                assert emitted_in[index] == holder
