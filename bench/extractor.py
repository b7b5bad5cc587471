"""Section 1: extractor CPU per 4-character chunk, against the floor and the popular alternatives.

- floor: `json.loads` of the whole text plus validating every element: what parsing costs when
  nothing is incremental (the least any extractor can pay), spread over the chunks;
- rankstream: `ItemExtractor(model).feed(chunk)` for every chunk, validation included;
- instructor: `IterableModel(model).tasks_from_chunks`, instructor's streaming `Iterable` parser;
- naive re-parse: append the chunk, re-parse the whole buffer as partial JSON, validate the
  elements that are new: with `jiter` (what the OpenAI SDK uses for partial objects) and with
  `partial_json_parser` (LangChain's). It is quadratic, so past 100 items it is timed on 200
  evenly spaced prefixes (its cost per chunk is the parse of the text so far, so the sample's
  mean is the mean).

Medians of several runs, each run timing all contenders on the same text.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import jiter
import partial_json_parser
from instructor import IterableModel
from pydantic import BaseModel

from worker.extract import ItemExtractor

from .common import Row

CHUNK = 4
SIZES = (10, 100, 1000, 10000)
NAIVE_SAMPLES = 200


class Rec(BaseModel):
    product_id: str
    reason: str


def document(n: int) -> str:
    items = [{"product_id": str(100 + i), "reason": "short text"} for i in range(n)]
    return json.dumps({"recommendations": items})


def chunked(text: str) -> list[str]:
    return [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)]


def floor(text: str, chunks: list[str]) -> None:
    for element in json.loads(text)["recommendations"]:
        Rec.model_validate(element)


def rankstream(text: str, chunks: list[str]) -> None:
    feed = ItemExtractor(Rec).feed
    for chunk in chunks:
        feed(chunk)


def instructor(text: str, chunks: list[str]) -> None:
    for _ in IterableModel(Rec).tasks_from_chunks(iter(chunks)):  # type: ignore[attr-defined]
        pass


def parse_jiter(buffer: str) -> object:
    return jiter.from_json(buffer.encode(), partial_mode="trailing-strings")


PARSERS: dict[str, Callable[[str], object]] = {
    "jiter": parse_jiter,
    "partial_json_parser": partial_json_parser.loads,
}


def naive_step(parse: Callable[[str], object], buffer: str, emitted: int) -> int:
    parsed = parse(buffer)
    items = parsed.get("recommendations", []) if isinstance(parsed, dict) else []
    for element in items[emitted : max(emitted, len(items) - 1)]:  # the last may still be growing
        Rec.model_validate(element)
    return max(emitted, len(items) - 1)


def naive(parse: Callable[[str], object]) -> Callable[[str, list[str]], None]:
    def run(text: str, chunks: list[str]) -> None:
        buffer, emitted = "", 0
        for chunk in chunks:
            buffer += chunk
            emitted = naive_step(parse, buffer, emitted)

    return run


def naive_sampled(parse: Callable[[str], object], chunks: list[str]) -> float:
    """Mean cost of one naive step over evenly spaced prefixes, in seconds."""
    prefixes = [
        "".join(chunks[: round(i * len(chunks) / NAIVE_SAMPLES)]) for i in range(1, NAIVE_SAMPLES + 1)
    ]
    start = time.perf_counter()
    for prefix in prefixes:
        naive_step(parse, prefix, 0)
    return (time.perf_counter() - start) / len(prefixes)


def per_chunk(
    fn: Callable[[str, list[str]], None], text: str, chunks: list[str], budget: float = 0.3
) -> float:
    """Seconds per chunk, over as many whole passes as fit in about `budget` seconds."""
    start = time.perf_counter()
    passes = 0
    while True:
        fn(text, chunks)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / passes / len(chunks)


def measure(runs: int) -> list[Row]:
    rows: list[Row] = []
    per_size: dict[int, float] = {}
    for n in SIZES:
        text = document(n)
        chunks = chunked(text)
        samples: dict[str, list[float]] = {
            "floor": [],
            "rankstream": [],
            "instructor": [],
            **{p: [] for p in PARSERS},
        }
        for _ in range(runs):
            samples["floor"].append(per_chunk(floor, text, chunks))
            samples["rankstream"].append(per_chunk(rankstream, text, chunks))
            samples["instructor"].append(per_chunk(instructor, text, chunks))
            for name, parse in PARSERS.items():
                cost = per_chunk(naive(parse), text, chunks) if n <= 100 else naive_sampled(parse, chunks)
                samples[name].append(cost)
        us = {name: statistics.median(values) * 1e6 for name, values in samples.items()}
        per_size[n] = us["rankstream"]
        label = f"extractor, {n} items ({len(chunks)} chunks), us/chunk"
        rows.append(
            Row(
                "1 extractor",
                label,
                f"{us['rankstream']:.3f}",
                f"{us['floor']:.3f} (floor)",
                f"{us['rankstream'] / us['floor']:.1f}x floor",
            )
        )
        rows.append(
            Row(
                "",
                "",
                "",
                f"{us['instructor']:.3f} (instructor)",
                f"{us['instructor'] / us['rankstream']:.0f}x slower",
            )
        )
        sampled = ", sampled" if n > 100 else ""
        for name in PARSERS:
            rows.append(
                Row(
                    "",
                    "",
                    "",
                    f"{us[name]:.3f} (re-parse: {name}{sampled})",
                    f"{us[name] / us['rankstream']:.0f}x slower",
                )
            )
    drift = per_size[10000] / per_size[1000] - 1
    rows.append(
        Row(
            "1 extractor",
            "linearity: per chunk at 10,000 vs 1,000 items",
            f"{drift:+.1%}",
            "",
            "target within 10%",
        )
    )
    return rows
