"""Splitting the answer's text into model-like tokens, the unit the simulator paces."""

from __future__ import annotations

import re

MAX_TOKEN_CHARS = 6
_TOKEN_PIECE = 5

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
