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


#: Sentence-initial words whose capital says nothing about a name: pronouns, determiners,
#: auxiliaries, question words, conjunctions, prepositions, greetings. Words that are also
#: given names or places ("Will", "May", "Mark", "Nice", "Reading") are deliberately absent.
SENTENCE_STARTERS = frozenset("""a about above after again all also although am an and any are
as at be because been before being below besides between both but by can could did do does
doing done down during each either else even ever every for from further had has have having
he hello her here hers herself hi him himself his how however i if in into is it its itself
just let lets many me might more most much must my myself neither no nor not now of off ok
okay on once only or other our ours ourselves out over please same she should since so some
such than thank thanks that the their theirs them themselves then there these they this those
though through thus to too under unless until up us very was we were what whatever when
whenever where whether which while who whom whose why with within without would yes yet you
your yours yourself yourselves""".split())
_I_FORMS = frozenset({"i", "i'm", "i've", "i'll", "i'd", "i’m", "i’ve", "i’ll", "i’d"})
_ASCII_UPPER = re.compile(r"[A-Z]")
_WORD_AT = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
_OPENERS = " \t\"'“‘([*-•>#"  # between a sentence end and its first word
_ENDS = ".!?:;\n\r"


def may_hold_name(text: str) -> bool:
    """False when no name or place can be in `text`: it has no upper-case letter but the
    pronoun "I" and sentence-initial function words ("The", "Please", "Can").

    The NER recognizer keeps only PERSON/LOCATION/NRP entities with an upper-case letter
    (``recognizers/names.py``), so without one spaCy's NER cannot add a finding; caseless
    scripts have none either and are dropped the same way."""
    if text.isascii():
        if text.lower() == text:
            return False
        capitals = (m.start() for m in _ASCII_UPPER.finditer(text))
    else:
        capitals = (i for i, c in enumerate(text) if c.isupper())
    for i in capitals:
        if i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_'’"):
            return True  # inside a word: "iPhone", "McDonald", "HTTP"
        m = _WORD_AT.match(text, i)
        word = m.group().lower() if m else ""
        if not word or any(c.isupper() for c in m.group()[1:]):
            return True
        if word in _I_FORMS:
            continue
        j = i - 1
        while j >= 0 and text[j] in _OPENERS:
            j -= 1
        if (j < 0 or text[j] in _ENDS) and word in SENTENCE_STARTERS:
            continue
        return True
    return False


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
