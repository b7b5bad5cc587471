"""The deterministic relevance heuristic the simulator ranks with: `rank` and `Ranked`."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .prompt import Candidate

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
