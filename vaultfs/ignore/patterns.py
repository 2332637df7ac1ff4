"""One file of ignore patterns (a ``.gitignore``, ``info/exclude``, a config list), matched
the way git matches one entry.

pathspec's `GitIgnoreSpecPattern` turns each line into a regular expression. Those
expressions are written for `GitIgnoreSpec`, which asks "is this path, or any directory
above it, matched?": ``build`` also matches ``build/x/y``. vaultfs never asks about a path
below an excluded directory (it does not descend there), and it stacks files itself
(deeper files first, as git does), so it needs the narrower question git's own
``last_matching_pattern`` asks: does this pattern match *this entry*. `_exact` rewrites
each expression's tail to say that; it also restores the two cases pathspec collapses,
``a/**`` (everything inside ``a``, not ``a`` itself) and ``a/**/`` (directories inside
``a``). A directory is tested with a trailing ``/``, a file without, so ``name/`` patterns
match directories only.

Bracket expressions are translated here, not by pathspec, which copies them into the
expression nearly as written: git's wildmatch gives ``[[:alpha:]]`` (POSIX classes), ``\\``
inside brackets (``[\\]]``: a ``]``) and ranges their own meaning, never matches ``/`` with
one, and a pattern with an unterminated ``[`` or an unknown class matches nothing. Each
bracket expression is replaced by a placeholder character before pathspec sees the
pattern, and by its expression afterwards (`_brackets`). One divergence is left: a ``/``
inside brackets (``[a/b]``) makes git anchor the pattern; here it does not.

Lines are read as git reads them: a UTF-8 byte-order mark at the start is skipped, a
``\\r`` before the newline is dropped, trailing spaces are trimmed unless escaped.
Names are matched as text decoded with ``surrogateescape`` (so any byte survives); a
``?`` or ``[...]`` therefore matches one character where git matches one byte, which only
differs for names outside ASCII.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pathspec.patterns.gitignore.base import GitIgnorePatternError
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

_DIR_OPT = "(?:(?P<ps_d>/)|$)"  # the tail of a pattern that matches a file or a directory
_DIR_ONLY = "(?P<ps_d>/)"  # the tail of a ``name/`` pattern


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern line: where it is written (for `vaultfs explain`) and what it matches."""

    source: str  # the file, as shown to the user ("app/.gitignore", "[collections.c].exclude")
    line: int  # 1-based line (or list position) in `source`
    text: str  # the line as written
    negated: bool  # a ``!`` pattern: re-includes what an earlier one excluded
    regex: re.Pattern[str]

    def where(self) -> str:
        return f'{self.source}:{self.line} "{self.text}"'


@dataclass(frozen=True, slots=True)
class RuleFile:
    """The patterns of one file, scoped to the directory `base` (relative to the root of
    the context that stacks it; "" for the root itself)."""

    base: str
    rules: tuple[Rule, ...]

    def match(self, path: str) -> Rule | None:
        """The last rule that matches `path` (relative to the stacking root; a directory
        ends with "/"), or None. The caller only asks about paths under `base`."""
        rel = path[len(self.base) + 1 :] if self.base else path
        for rule in reversed(self.rules):
            if rule.regex.match(rel):
                return rule
        return None


def split_lines(data: bytes) -> list[str]:
    """The lines of an ignore file as git reads them (BOM skipped, CR before LF dropped)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = []
    for raw in data.split(b"\n"):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        lines.append(os.fsdecode(raw))
    return lines


def parse(lines: list[str], source: str, base: str) -> RuleFile:
    """Compile the pattern lines of one file; blank lines, comments and patterns git
    discards (an invalid range, a lone ``!``) match nothing."""
    rules = []
    for number, text in enumerate(lines, 1):
        rule = _compile(text, source, number)
        if rule is not None:
            rules.append(rule)
    return RuleFile(base, tuple(rules))


def _compile(text: str, source: str, number: int) -> Rule | None:
    trimmed = _trim(text)
    try:
        marked, pieces = _brackets(trimmed)
        regex, include = GitIgnoreSpecPattern.pattern_to_regex(marked)
    except (GitIgnorePatternError, _Unmatchable):
        return None
    if regex is None or include is None:
        return None
    negated = not include
    body = marked[1:] if negated else marked
    exact = _exact(body, regex)
    for mark, piece in pieces.items():
        exact = exact.replace(mark, piece)
    return Rule(source, number, trimmed, negated, re.compile(exact))


class _Unmatchable(Exception):
    """A pattern git's wildmatch gives up on wherever it is reached (an unterminated ``[``,
    an unknown ``[:class:]``): it matches nothing."""


# git's ctype (ASCII only; its isspace leaves out \v and \f), as regex set members.
_CLASSES = {
    "alnum": "a-zA-Z0-9",
    "alpha": "a-zA-Z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}


def _brackets(text: str) -> tuple[str, dict[str, str]]:
    """`text` with each bracket expression replaced by a placeholder character (one pathspec
    keeps as a literal), and the expression each placeholder stands for. A ``/`` inside
    brackets anchors the pattern, as any slash but a trailing one does in git: a leading
    ``/`` says so to pathspec once the brackets are gone."""
    out: list[str] = []
    pieces: dict[str, str] = {}
    slash = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            out.append(text[i : i + 2])
            i += 2
        elif c == "[":
            mark = next(chr(p) for p in range(0xE000 + len(pieces), 0xF900) if chr(p) not in text)
            pieces[mark], i, inner_slash = _bracket(text, i + 1)
            slash = slash or inner_slash
            out.append(mark)
        else:
            out.append(c)
            i += 1
    marked = "".join(out)
    if slash and "/" not in marked.rstrip("/"):
        marked = "!/" + marked[1:] if marked.startswith("!") else "/" + marked
    return marked, pieces


def _bracket(text: str, i: int) -> tuple[str, int, bool]:
    """The expression of the bracket expression whose body starts at `i` (after the ``[``),
    the index after its ``]``, and whether it names ``/`` — git's wildmatch ``[`` case: the
    first member may be ``]``, ``\\`` makes the next character literal, ``a-z`` is a range
    (one whose end is below its start adds nothing), ``[:name:]`` a class, and no bracket
    matches ``/``."""
    start = i
    negated = i < len(text) and text[i] in "!^"
    i += negated
    members: list[str] = []
    prev: str | None = None  # the last single member: the start of a range
    while True:
        if i >= len(text):
            raise _Unmatchable
        c = text[i]
        if c == "]" and i > start + negated:
            break
        if c == "\\":
            i, prev = i + 1, _at(text, i + 1)
            members.append(re.escape(prev))
        elif c == "-" and prev is not None and text[i + 1 : i + 2] not in ("", "]"):
            i += 1 + (text[i + 1] == "\\")
            hi = _at(text, i)
            members.append(f"{re.escape(prev)}-{re.escape(hi)}" if prev <= hi else "")
            prev = None
        elif c == "[" and text[i + 1 : i + 2] == ":" and _class_end(text, i):
            end = _class_end(text, i)
            name = text[i + 2 : end - 1]
            if name not in _CLASSES:
                raise _Unmatchable
            members.append(_CLASSES[name])
            prev, i = None, end
        else:
            members.append(re.escape(c))
            prev = c
        i += 1
    body = "".join(members)
    expr = f"[^/{body}]" if negated else f"(?!/)[{body}]"
    return expr, i + 1, "/" in text[start:i]


def _at(text: str, i: int) -> str:
    """The character at `i`; a pattern that ends inside brackets matches nothing."""
    if i >= len(text):
        raise _Unmatchable
    return text[i]


def _class_end(text: str, i: int) -> int:
    """Where a ``[:name:]`` starting at `i` ends (the index of its ``]``), or 0 if there is no
    ``:]`` before the next ``]`` (then git takes the ``[`` as a plain member)."""
    close = text.find("]", i + 2)
    if close < 0:
        raise _Unmatchable
    return close if close - 1 > i + 1 and text[close - 1] == ":" else 0


def _trim(text: str) -> str:
    """Trailing spaces go, unless escaped with a backslash (git's trim_trailing_spaces)."""
    stripped = text.rstrip(" ")
    if stripped.endswith("\\") and len(stripped) < len(text):
        return stripped + " "
    return stripped


def _exact(body: str, regex: str) -> str:
    """pathspec's expression for `body`, narrowed to match the entry itself (see the module
    docstring). The entry is a path; a directory ends with "/"."""
    if regex == ".":  # "*", "**": everything
        return ".+"
    if regex == _DIR_ONLY:  # "*/", "**/": every directory
        return ".*/$"
    if regex == "/":  # "**/*/**": everything below the first level
        return ".+/.+$"
    if regex.endswith(_DIR_OPT):
        return regex[: -len(_DIR_OPT)] + "/?$"
    if regex.endswith(_DIR_ONLY):
        head = regex[: -len(_DIR_ONLY)]
        if body.endswith("/**/"):  # pathspec folds "a/**/" into "a/": only dirs inside a
            return head + "/.+/$"
        return head + "/$"
    if regex.endswith("/"):  # "a/**": everything inside a, not a itself
        return regex + ".+$"
    return regex + "$"
