"""How a text is cut for analysis: overlapping chunks, and which chunks are prose for NER."""

from __future__ import annotations

import re

_WORDLIKE = re.compile(r"[\"'(\[]*[^\W\d_]+(?:['’\-.][^\W\d_]+)*[\"')\].,;:!?]*")


def looks_like_prose(text: str) -> bool:
    """Heuristic: at least two word-like tokens, and they are >= 30% of all tokens.

    ``claude-sonnet-4-5-20250929``, UUIDs, base64, numbers, ``snake_case_ids`` and JSON
    punctuation are not prose; sentences, names ("Jane Doe") and comments are.
    """
    tokens = text.split()
    if len(tokens) < 2:
        return False
    wordlike = sum(1 for t in tokens if _WORDLIKE.fullmatch(t))
    return wordlike >= 2 and wordlike >= 0.3 * len(tokens)


def split_chunks(text: str, size: int, overlap: int) -> list[tuple[int, str]]:
    """Overlapping chunks (offset, chunk) cut at a newline, sentence end or space when one
    lies in the second half of the window. Any entity shorter than ``overlap`` is wholly
    inside at least one chunk."""
    n = len(text)
    if n <= size:
        return [(0, text)]
    chunks: list[tuple[int, str]] = []
    pos = 0
    while pos < n:
        end = min(pos + size, n)
        if end < n:
            window = text[pos + size // 2 : end]
            cut = max(window.rfind("\n"), window.rfind(". "), -1)
            if cut < 0:
                cut = window.rfind(" ")
            if cut >= 0:
                end = pos + size // 2 + cut + 1
        chunks.append((pos, text[pos:end]))
        if end >= n:
            break
        nxt = end - overlap
        space = text.find(" ", nxt, end)
        pos = space + 1 if space >= 0 and space + 1 < end else nxt
        pos = max(pos, chunks[-1][0] + 1)
    return chunks



_CAPS_WORD = re.compile(r"(?<![\w'’])[^\W\d_]{2,}(?![\w'’])")


def headline_copy(text: str) -> str | None:
    """A title-cased copy of a short all-caps line (``LONDON 1996-12-06``, ``SOCCER - BRAZIL
    BEAT CHILE``), same length, for NER; None for anything else.

    Such lines are not prose (``looks_like_prose``) and spaCy's small model finds no entity
    in upper-case words; in title case it finds the places and names again. Identifiers
    (``MAX_RETRIES``, ``AKIA...``) keep their case: only whole words of letters change.
    """
    if len(text) > 120 or text.count("\n") > 1:
        return None
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 3 or any(c.islower() for c in letters):
        return None
    out = _CAPS_WORD.sub(lambda m: m.group()[0] + m.group()[1:].lower(), text)
    return out if len(out) == len(text) and out != text else None
