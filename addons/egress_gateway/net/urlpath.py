"""URL paths: the one normaliser, the one path glob and the one prefix test over a policy.

Every feature that matches a request's path (approval rules, credential bindings, redaction
rules) compares two forms of it: the *raw* path as the client sent it (without query and
fragment) and the *normalised* path, as a server would likely resolve it (percent-escapes
decoded, up to three times against double encoding; backslashes as slashes; ``.`` and ``..``
segments and repeated slashes removed). A feature that holds or redacts applies when EITHER
form matches (an agent cannot dodge a rule by spelling the path differently); a feature that
hands out a secret applies only when BOTH match (``/v1/../admin`` is not under ``/v1/``).

The glob language: the pattern starts with ``/``; ``*`` matches any characters, ``/`` included;
``/x/*`` also matches ``/x`` itself; everything else is literal (no ``?``, ``[...]``, ``**``).
"""

from __future__ import annotations

import re
import urllib.parse

MAX_GLOB = 1024


def strip_query(path: str) -> str:
    """The path without its query and fragment."""
    return path.split("?", 1)[0].split("#", 1)[0]


def normalize_path(path: str) -> str:
    """The path as a server would likely see it: no query, %XX decoded, no dot segments or '//'.

    Case is kept (servers' paths are case-sensitive); globs decide whether case matters.
    """
    p = strip_query(path)
    for _ in range(3):  # double (and triple) encoding
        q = urllib.parse.unquote(p)
        if q == p:
            break
        p = q
    p = p.replace("\\", "/")
    segments: list[str] = []
    for seg in p.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    out = "/" + "/".join(segments)
    if p.endswith("/") and segments:
        out += "/"
    return out


def forms(path: str) -> tuple[str, str]:
    """(raw path without query, normalised path) of a request path."""
    return strip_query(path), normalize_path(path)


def validate_path_glob(pattern: str) -> str:
    """A path glob: starts with '/', '*' matches any characters (also '/'), the rest is literal."""
    p = pattern.strip()
    if not p.startswith("/"):
        raise ValueError(f"{pattern!r}: a path glob starts with '/', as in '/admin/*'")
    for ch, why in (("?", "the query is not matched; glob the path only"),
                    ("#", "fragments are never sent"),
                    ("[", "character classes are not supported"),
                    ("]", "character classes are not supported")):
        if ch in p:
            raise ValueError(f"{pattern!r}: {ch!r} is not allowed ({why})")
    if "**" in p:
        raise ValueError(f"{pattern!r}: use '*' (it already matches across '/')")
    if len(p) > MAX_GLOB:
        raise ValueError(f"path glob longer than {MAX_GLOB} characters")
    return p


class PathGlob:
    """A validated path glob, compiled once (when the policy loads)."""

    __slots__ = ("pattern", "_rx")

    def __init__(self, pattern: str, *, case_sensitive: bool = False) -> None:
        self.pattern = validate_path_glob(pattern)
        body = ".*".join(re.escape(part) for part in self.pattern.split("*"))
        if self.pattern.endswith("/*"):  # '/admin/*' also matches '/admin' itself
            body = body[: -len(re.escape("/") + ".*")] + "(?:/.*)?"
        self._rx = re.compile(body, re.DOTALL | (0 if case_sensitive else re.IGNORECASE))

    def fullmatch(self, path: str) -> bool:
        """Whether one form of a path (already without query) matches."""
        return self._rx.fullmatch(path) is not None

    def matches_either(self, path: str) -> bool:
        """The raw or the normalised form matches (rules that hold or redact)."""
        return any(self.fullmatch(p) for p in forms(path))

    def matches_both(self, path: str) -> bool:
        """The raw and the normalised form both match (bindings that hand out a secret)."""
        return all(self.fullmatch(p) for p in forms(path))

    def __repr__(self) -> str:
        return f"PathGlob({self.pattern!r})"


def validate_prefix(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError(f"path prefix {prefix!r} must start with '/'")
    return prefix


def under_prefix(prefix: str, path: str) -> bool:
    """`path` (one form, without query) is `prefix` or below it ('/v1' covers '/v1/x', not '/v1x')."""
    return (path == prefix or path.startswith(prefix.rstrip("/") + "/")
            or (prefix.endswith("/") and path.startswith(prefix)))


def under_any_prefix(prefixes: list[str], path: str) -> bool:
    """The raw or the normalised form of `path` is under one of `prefixes` (case-sensitive)."""
    return any(under_prefix(x, p) for p in set(forms(path)) for x in prefixes)
