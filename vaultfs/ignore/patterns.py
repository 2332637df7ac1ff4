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
        regex, include = GitIgnoreSpecPattern.pattern_to_regex(trimmed)
    except GitIgnorePatternError:
        return None
    if regex is None or include is None:
        return None
    negated = not include
    body = trimmed[1:] if negated else trimmed
    return Rule(source, number, trimmed, negated, re.compile(_exact(body, regex)))


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
