"""URL path globs of egress rules: validation, compilation, overlap and fast tests.

Glob language: a glob starts with ``/``; ``*`` matches within one segment (no ``/``); ``**``
is a whole segment and matches any number of segments (``/repos/**`` matches ``/repos`` and
everything under it). No ``?``, ``#``, whitespace or control characters.

Invariants:
- A glob is matched against a normalised reading of the request path, never the raw target:
  ``corral.policy.readings`` makes the readings, ``corral.policy.match`` combines them.
- ``globs_overlap`` is the one conservative overlap test: two globs overlap unless their
  literal prefixes (up to the first ``*``) diverge; a glob without ``*`` overlaps another glob
  only if that glob matches it.
"""

from __future__ import annotations

import re

__all__ = [
    "GlobTest",
    "compile_glob",
    "glob_hit",
    "glob_literal_segments",
    "glob_test",
    "globs_overlap",
    "validate_glob",
]

_BAD_CHARS = re.compile(r"[\s?#\x00-\x1f\x7f]")


def validate_glob(glob: str) -> str:
    """Return the glob unchanged if valid; ``ValueError`` carries a one-line hint."""
    if not glob.startswith("/"):
        raise ValueError("a path glob starts with '/', e.g. '/repos/**'")
    if _BAD_CHARS.search(glob):
        raise ValueError("no spaces, '?', '#' or control characters in a path glob")
    for segment in glob.split("/")[1:]:
        if "**" in segment and segment != "**":
            raise ValueError("'**' must be a whole segment, e.g. '/a/**/b'; use '*' inside one")
        if segment in (".", ".."):
            raise ValueError("no '.' or '..' segments in a path glob")
    return glob


def compile_glob(glob: str) -> re.Pattern[str]:
    parts: list[str] = []
    segments = glob.split("/")[1:]
    for i, segment in enumerate(segments):
        if segment == "**":
            # '/**' matches nothing or '/...' so '/a/**' covers '/a' itself.
            parts.append("(?:/.*)?" if i == len(segments) - 1 else "(?:/[^/]*)*")
        else:
            parts.append("/" + "[^/]*".join(re.escape(piece) for piece in segment.split("*")))
    return re.compile("".join(parts) or "/")


def glob_literal_segments(glob: str) -> tuple[str, ...]:
    """The whole segments before the first one that contains ``*`` (the index key)."""
    out: list[str] = []
    for segment in glob.split("/")[1:]:
        if "*" in segment:
            break
        out.append(segment)
    return tuple(out)


def _literal_prefix(glob: str) -> str:
    star = glob.find("*")
    return glob if star < 0 else glob[:star]


def globs_overlap(a: str, b: str) -> bool:
    if "*" not in a:
        return compile_glob(b).fullmatch(a) is not None
    if "*" not in b:
        return compile_glob(a).fullmatch(b) is not None
    pa, pb = _literal_prefix(a), _literal_prefix(b)
    return pa.startswith(pb) or pb.startswith(pa)


# Fast tests for the common glob shapes; a regex only for the rest. A decision checks a glob in
# a few string operations instead of a regex call (the hot path's largest cost otherwise).
ANY, SUBTREE, LITERAL, CHILD, REGEX, COUNT = range(6)
GlobTest = tuple[int, str, str, "re.Pattern[str] | None"]


def glob_test(glob: str) -> GlobTest:
    if glob == "/**":
        return (ANY, "", "", None)
    if glob.endswith("/**") and "*" not in glob[:-3]:
        return (SUBTREE, glob[:-3], glob[:-2], None)  # "/p/**": "/p" itself or under "/p/"
    if "*" not in glob:
        return (LITERAL, glob, "", None)
    if glob.endswith("/*") and "*" not in glob[:-2]:
        return (CHILD, glob[:-1], "", None)  # "/p/*": one segment under "/p/"
    return (REGEX, "", "", compile_glob(glob))


def glob_hit(tests: tuple[GlobTest, ...], path: str) -> bool:
    for kind, a, b, rx in tests:
        if kind == SUBTREE:
            if path == a or path.startswith(b):
                return True
        elif kind == LITERAL:
            if path == a:
                return True
        elif kind == ANY:
            return True
        elif kind == CHILD:
            if path.startswith(a) and "/" not in path[len(a):]:
                return True
        elif kind == COUNT:  # only where the trie walk has already checked the prefix
            if path.count("/") == len(a):
                return True
        elif rx is not None and rx.fullmatch(path) is not None:
            return True
    return False
