"""What a snapshot leaves out of a collection, and why (docs/config.md, "What a collection
leaves out").

The scan asks one `Scope` per directory about each entry (`Scope.decide`) before it
stats anything below it, so an excluded directory costs one ``stat`` and is never listed.
The rules, in the order they are asked:

1. the collection's own ``exclude`` patterns (gitignore syntax, relative to its root);
2. ``exclude_if_present``: a directory holding one of these names (``CACHEDIR.TAG`` only
   with the Cache Directory Tagging signature);
3. ``exclude_larger_than`` (warm collections): a regular file above the size (not inside
   ``.git``: its pack files are the history);
4. git's ignore rules (``gitignore``), with git's semantics: inside a work tree, the
   ``.gitignore`` of each directory from the top of the work tree down (deeper files
   first, the last matching line of a file wins), then ``info/exclude``, then
   ``core.excludesFile`` if ``git_global_excludes``. An excluded directory is not
   descended into, so nothing below it can be re-included — except files git tracks:
   git itself never ignores those, so neither does vaultfs (`Scope` descends into an
   excluded directory only along tracked paths). ``.git`` is always kept (the history).

The first three are the collection owner's explicit choice and apply to tracked files too.
A directory with its own ``.git`` starts a new context (a nested repository or submodule:
its own rules and index apply inside it, as when git runs there). Outside any work tree a
``.gitignore`` applies only with ``gitignore_outside_repos``.

What a scope decides depends only on the rules and the entries' names, types and sizes,
so a directory's listing signature (`vaultfs.source`) covers exactly the entries kept:
a change of rules that changes what a directory keeps changes its signature, and the
directory memo is not reused for it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from vaultfs.config import CollectionConfig
from vaultfs.ignore import git
from vaultfs.ignore.patterns import Rule, RuleFile, parse, split_lines
from vaultfs.output import display_path, human_bytes

__all__ = ["CACHEDIR_SIGNATURE", "Rule", "Rules", "Scope", "Verdict", "describe"]

CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one entry is kept, and which rule says so.

    `reason`: kept — ``none`` (no rule matches), ``root`` (the collection's path itself),
    ``git-dir`` (``.git``), ``negated`` (a ``!`` line re-includes it), ``tracked`` (git
    tracks it although `rule` excludes it or the directory `inside`); left out —
    ``gitignore``, ``exclude`` (by `rule`), ``present`` (holds the file `detail`), ``size``
    (`detail`: its size), ``inside`` (the directory `inside` is left out, for the reason
    `cause`).
    """

    kept: bool
    reason: str
    rule: Rule | None = None
    detail: str = ""
    inside: bytes | None = None  # an excluded directory above the entry (collection-relative)
    cause: Verdict | None = None


KEPT = Verdict(True, "none")
GIT_DIR = Verdict(True, "git-dir")
ROOT = Verdict(True, "root")


@dataclass(slots=True)
class _Repo:
    """One git work tree met by the scan (or, with ``gitignore_outside_repos``, the
    collection root standing in for one)."""

    top: bytes
    tracked: frozenset[bytes] | None  # None: unknown (no git), protection off
    tracked_dirs: frozenset[bytes]
    low: tuple[RuleFile, ...]  # info/exclude, then core.excludesFile: after every .gitignore


class Rules:
    """The exclusion rules of one collection; `root_scope` starts a walk."""

    def __init__(self, collection: CollectionConfig, git_excludes_default: Path | None = None) -> None:
        """`git_excludes_default`: git's default ``core.excludesFile`` (`Config.git_excludes_default`)."""
        self.collection = collection
        self.git_excludes_default = (
            None if git_excludes_default is None else os.fsencode(git_excludes_default)
        )
        self.root = os.fsencode(collection.path)
        self.gitignore = collection.uses_gitignore
        name = f"[collections.{collection.name}].exclude"
        self.user = parse(list(collection.exclude), name, "") if collection.exclude else None
        self.present = tuple(os.fsencode(n) for n in collection.exclude_if_present)
        self.larger_than = collection.exclude_larger_than
        self.notes: list[str] = []  # said once each: rules that could not be applied fully
        self._global: dict[bytes, RuleFile | None] = {}

    def root_scope(self) -> Scope:
        return Scope(self, self.root, b"", None, b"", ())

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def shown(self, path: bytes) -> str:
        """A rule file's name for messages: relative to the collection root when under it."""
        if path.startswith(self.root + b"/"):
            return display_path(path[len(self.root) + 1 :])
        return display_path(path)

    def read(self, path: bytes, base: bytes, *, follow: bool = True) -> RuleFile | None:
        """The patterns of an ignore file, or None if there is none (or it cannot be read,
        or is no regular file: then fewer files are left out, and a note says so).
        `follow`: False for a work tree's ``.gitignore`` files (git does not follow them)."""
        try:
            data = git.read_regular(path, follow=follow)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.note(f"cannot read {self.shown(path)} ({e.strerror}): its rules are not applied")
            return None
        return parse(split_lines(data), self.shown(path), os.fsdecode(base))

    def repo(self, top: bytes) -> _Repo:
        tracked, why = git.tracked_paths(top)
        if tracked is None:
            self.note(
                f"tracked-file protection is off for {self.shown(top) if top != self.root else '.'} "
                f"({why}): files git tracks are left out when an ignore rule matches them"
            )
        dirs: set[bytes] = set()  # the directories holding tracked paths
        for p in tracked or ():
            cut = p.rfind(b"/")
            while cut > 0 and p[:cut] not in dirs:
                dirs.add(p[:cut])
                cut = p.rfind(b"/", 0, cut)
        low = [self.read(git.info_exclude(top), b"")]
        if self.collection.git_global_excludes:
            low.append(self._global_excludes(top))
        return _Repo(top, tracked, frozenset(dirs), tuple(f for f in low if f is not None))

    def _global_excludes(self, top: bytes) -> RuleFile | None:
        path, why = git.excludes_file(top, self.git_excludes_default)
        if path is None:
            self.note(f"git_global_excludes: {why}: core.excludesFile is not applied")
            return None
        if path not in self._global:
            self._global[path] = self.read(path, b"")
        return self._global[path]

    def cache_tag(self, directory: bytes) -> str | None:
        """The `exclude_if_present` name `directory` holds, if any. ``CACHEDIR.TAG`` counts only
        as a regular file that starts with the Cache Directory Tagging signature."""
        for name in self.present:
            path = directory + b"/" + name
            if os.fsdecode(name) != CACHEDIR_TAG:
                if os.path.lexists(path):
                    return os.fsdecode(name)
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                ok = stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 43) == CACHEDIR_SIGNATURE
            except OSError:
                ok = False
            finally:
                os.close(fd)
            if ok:
                return CACHEDIR_TAG
        return None

    def explain(self, rel: bytes) -> Verdict:
        """The verdict on one path (relative to the collection root), asking each directory
        above it on the way down as the scan would (b"": the root, never left out). OSError
        if the path does not exist."""
        if not rel:
            return ROOT
        scope = self.root_scope()
        scope.listed(os.listdir(self.root))
        parts = rel.split(b"/")
        for i, name in enumerate(parts):
            st = os.lstat(scope.path + b"/" + name)
            verdict = scope.decide(name, st)
            if i == len(parts) - 1:
                return GIT_DIR if verdict is KEPT and scope.raw else verdict
            if not verdict.kept and verdict.reason == "inside":
                return verdict
            if not verdict.kept:
                inside = scope.rel + b"/" + name if scope.rel else name
                return Verdict(False, "inside", verdict.rule, inside=inside, cause=verdict)
            if stat.S_ISLNK(st.st_mode):
                raise NotADirectoryError(
                    f"{display_path(name)} is a symbolic link: "
                    "a snapshot keeps the link, not what it points to"
                )
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(f"{display_path(name)} is not a directory")
            scope = scope.child(name)
            scope.listed(os.listdir(scope.path))
        raise AssertionError("unreachable")


class Scope:
    """The rules in effect in one directory of the walk."""

    __slots__ = ("_dirs", "frames", "inside", "path", "raw", "rel", "repo", "repo_rel", "rules")

    def __init__(
        self,
        rules: Rules,
        path: bytes,
        rel: bytes,
        repo: _Repo | None,
        repo_rel: bytes,
        frames: tuple[RuleFile, ...],
        inside: Verdict | None = None,
        raw: bool = False,
    ) -> None:
        self.rules = rules
        self.path = path  # absolute
        self.rel = rel  # relative to the collection root
        self.repo = repo
        self.repo_rel = repo_rel  # relative to the repository's top
        self.frames = frames  # the .gitignore files in effect, shallowest first
        self.inside = inside  # set when this directory is excluded but holds tracked files
        self.raw = raw  # inside .git: git's rules do not apply
        self._dirs: dict[bytes, Verdict] = {}

    def listed(self, names: Collection[bytes]) -> None:
        """Take in this directory's own ``.git`` and ``.gitignore`` (the scan calls this once
        it has listed the directory)."""
        rules = self.rules
        if not rules.gitignore or self.raw:
            return
        if b".git" in names:
            self._start(rules.repo(self.path), b"", ())
        elif not self.rel:
            self._enclosing()
        if self.repo is not None and self.inside is None and b".gitignore" in names:
            found = rules.read(self.path + b"/.gitignore", self.repo_rel, follow=False)
            if found is not None:
                self.frames += (found,)

    def _start(self, repo: _Repo, repo_rel: bytes, frames: tuple[RuleFile, ...]) -> None:
        self.repo, self.repo_rel, self.frames, self.inside = repo, repo_rel, frames, None

    def _enclosing(self) -> None:
        """The collection root without its own ``.git``: inside a work tree above it, the
        ``.gitignore`` files from that tree's top down to the root's parent apply too."""
        rules = self.rules
        top = git.enclosing_work_tree(self.path)
        if top is None:
            if rules.collection.gitignore_outside_repos:
                self._start(_Repo(self.path, frozenset(), frozenset(), ()), b"", ())
            return
        rel = os.path.relpath(self.path, top)
        frames = []
        here, base = top, b""
        for part in rel.split(b"/"):
            found = rules.read(here + b"/.gitignore", base, follow=False)
            if found is not None:
                frames.append(found)
            here, base = here + b"/" + part, base + b"/" + part if base else part
        self._start(rules.repo(top), rel, tuple(frames))

    def decide(self, name: bytes, st: os.stat_result) -> Verdict:
        """Whether the entry `name` of this directory (its lstat: `st`) is kept."""
        is_dir = stat.S_ISDIR(st.st_mode)
        verdict = self._own_rules(name, st, is_dir) or self._git(name, is_dir)
        if is_dir and verdict.kept:
            self._dirs[name] = verdict
        return verdict

    def child(self, name: bytes) -> Scope:
        """The scope of a kept subdirectory (`decide` said so)."""
        verdict = self._dirs.pop(name, KEPT)
        rel = self.rel + b"/" + name if self.rel else name
        repo_rel = self.repo_rel + b"/" + name if self.repo_rel else name
        inside = self.inside
        if verdict.reason == "tracked" and inside is None and verdict.rule is not None:
            cause = Verdict(False, "gitignore", verdict.rule)
            inside = Verdict(False, "inside", verdict.rule, inside=rel, cause=cause)
        raw = self.raw or verdict is GIT_DIR
        return Scope(self.rules, self.path + b"/" + name, rel, self.repo, repo_rel, self.frames, inside, raw)

    def _own_rules(self, name: bytes, st: os.stat_result, is_dir: bool) -> Verdict | None:
        """The collection's own rules: ``exclude``, ``exclude_if_present``, ``exclude_larger_than``."""
        rules = self.rules
        if rules.user is not None:
            rel = self.rel + b"/" + name if self.rel else name
            rule = rules.user.match(os.fsdecode(rel) + ("/" if is_dir else ""))
            if rule is not None and not rule.negated:
                return Verdict(False, "exclude", rule)
        if is_dir and rules.present:
            tag = rules.cache_tag(self.path + b"/" + name)
            if tag is not None:
                return Verdict(False, "present", detail=tag)
        limit_bytes = rules.larger_than
        # Never inside .git: a pack file left out would leave a repository git cannot read.
        if limit_bytes is not None and not self.raw and stat.S_ISREG(st.st_mode) and st.st_size > limit_bytes:
            size, limit = human_bytes(st.st_size), human_bytes(limit_bytes)
            if size == limit:  # "1.0 KiB, larger than 1.0 KiB" would say nothing
                size, limit = f"{st.st_size:,} bytes", f"{limit_bytes:,} bytes"
            return Verdict(False, "size", detail=f"{size}, larger than {limit}")
        return None

    def _git(self, name: bytes, is_dir: bool) -> Verdict:
        repo = self.repo
        if repo is None or self.raw:
            return KEPT
        if name == b".git":
            return GIT_DIR
        path = self.repo_rel + b"/" + name if self.repo_rel else name
        tracked = repo.tracked is not None and (
            path in repo.tracked or (is_dir and path in repo.tracked_dirs)
        )
        if self.inside is not None:
            return (
                Verdict(True, "tracked", self.inside.rule, inside=self.inside.inside)
                if tracked
                else self.inside
            )
        rule = self._match(os.fsdecode(path) + ("/" if is_dir else ""))
        if rule is None:
            return KEPT
        if rule.negated:
            return Verdict(True, "negated", rule)
        return Verdict(True, "tracked", rule) if tracked else Verdict(False, "gitignore", rule)

    def _match(self, path: str) -> Rule | None:
        """The rule that decides `path` (relative to the work tree's top): the deepest
        ``.gitignore`` with a matching line, else info/exclude, else core.excludesFile."""
        for frame in reversed(self.frames):
            rule = frame.match(path)
            if rule is not None:
                return rule
        assert self.repo is not None
        for frame in self.repo.low:
            rule = frame.match(path)
            if rule is not None:
                return rule
        return None


def describe(v: Verdict) -> str:
    """The verdict in words, as `vaultfs explain` prints it."""
    rule = v.rule.where() if v.rule is not None else ""
    inside = display_path(v.inside) + "/" if v.inside is not None else ""
    if v.reason == "none":
        return "kept (no rule matches)"
    if v.reason == "root":
        return "kept: the collection's path itself is never left out"
    if v.reason == "git-dir":
        return "kept: git's own directory (the history)"
    if v.reason == "negated":
        return f"kept: re-included by {rule}"
    if v.reason == "tracked":
        what = f"{inside} is excluded by {rule}" if inside else f"{rule} matches"
        return f"kept: tracked by git although {what}"
    if v.reason in ("gitignore", "exclude"):
        return f"excluded by {rule}"
    if v.reason == "present":
        signed = " with the Cache Directory Tagging signature" if v.detail == CACHEDIR_TAG else ""
        return f"excluded: the directory holds {v.detail}{signed} (exclude_if_present)"
    if v.reason == "size":
        return f"excluded: {v.detail} (exclude_larger_than)"
    assert v.cause is not None
    return f"excluded: inside {inside} ({describe(v.cause)})"
