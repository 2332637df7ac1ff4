"""Git's ignore rules, with git itself as the oracle (issue 13, points 1 and 2).

Random trees get random nested ``.gitignore`` files (negations, ``**``, anchors, trailing
slashes, escapes, POSIX classes and other bracket expressions, directories named like
patterns), some files ``git add -f``-ed, a ``core.excludesFile`` (applied or not, as
``git_global_excludes`` says), and sometimes a nested repository with rules of its own,
untracked or added to the outer index as a submodule. The files the real scan keeps
(`vaultfs.source.Scanner` with the collection's `vaultfs.ignore.Rules`, on the real files)
must be exactly ``git ls-files --cached --others --exclude-standard`` plus everything under
``.git/``: tracked files are kept whatever the patterns say, and nothing below an excluded
directory comes back. git lists a nested repository as one entry (``n/`` untracked, ``n``
as a submodule) and never looks inside; the oracle then asks git inside it, as vaultfs
applies the nested repository's own rules there. ``--slow`` runs thousands of examples.

The same trees without ``.git`` (a plain directory) with ``gitignore_outside_repos``: the
``.gitignore`` files decide as git would if the directory were a repository; without it,
every file is kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultfs.config import CollectionConfig
from vaultfs.ignore import Rules
from vaultfs.source import ScannedDir, ScannedFile, Scanner

NAMES = (
    "a",
    "b",
    "build",
    "x.o",
    "y.txt",
    "foo",
    "*.o",
    "[ab]",
    "a b",
    "#c",
    "!n",
    "deep",
    "7z",
    "sp ",
    "B]",
)
SEGMENTS = (
    *("a", "b", "build", "*", "**", "*.o", "foo", "[ab]", "b?ild", "\\#c", "\\!n", "de*", "x.o", "n"),
    *("\\*.o", "de**", "**a", "sp\\ ", "sp ", "[[:alpha:]]", "[[:digit:]]*", "[![:alpha:]]*", "[[:upper:]]]"),
    *("[[:bogus:]]", "[a-]*", "[]B]*", "[\\]]", "[!a-c]", "[[:alnum:][:space:]]*", "[z-a]*", "b[", "[[:x]]"),
)
NESTED_AT = ("n", "a/n", "build/n", "deep/n")  # "n" is no name of NAMES: outer files never go there
COMMIT = ("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "t")


@pytest.fixture(autouse=True)
def global_excludes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This machine's git config plays no part; git's global config names one
    ``core.excludesFile``, whose lines each example writes."""
    excludes = tmp_path / "global-ignore"
    excludes.write_text("")
    config = tmp_path / "gitconfig"
    config.write_text(f"[core]\n\texcludesFile = {excludes}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return excludes


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def pattern() -> st.SearchStrategy[str]:
    segs = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3)
    return st.builds(
        lambda neg, lead, parts, trail: (
            ("!" if neg else "") + ("/" if lead else "") + "/".join(parts) + trail
        ),
        st.booleans(),
        st.booleans(),
        segs,
        st.sampled_from(("", "", "/")),
    )


paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map("/".join)
REPO = {
    "files": st.lists(paths, min_size=1, max_size=14, unique=True),
    "ignores": st.dictionaries(  # directory (one of the files' parents) → its .gitignore lines
        st.sampled_from(("", "a", "b", "build", "deep", "a/b", "foo/deep", "[ab]")),
        st.lists(pattern(), min_size=1, max_size=5),
        max_size=4,
    ),
    "info_exclude": st.lists(pattern(), max_size=2),
    "tracked": st.lists(st.integers(0, 13), max_size=4),
}
nested = st.fixed_dictionaries({**REPO, "at": st.sampled_from(NESTED_AT), "submodule": st.booleans()})
trees = st.fixed_dictionaries(
    {
        **REPO,
        "global": st.lists(pattern(), max_size=2),
        "git_global_excludes": st.booleans(),
        "nested": st.none() | nested,
    }
)


def build(root: Path, tree: dict[str, Any]) -> None:
    """The work tree `tree` describes at `root` (and its nested repository, if any)."""
    root.mkdir(exist_ok=True)
    git(root, "init", "-q")
    files: list[str] = tree["files"]
    for rel in files:
        path = root / rel
        if make_dir(path.parent) and not path.exists():
            path.write_text(rel)
    for directory, lines in tree["ignores"].items():
        if make_dir(root / directory):
            (root / directory / ".gitignore").write_text("\n".join(lines) + "\n")
    (root / ".git/info").mkdir(exist_ok=True)
    (root / ".git/info/exclude").write_text("\n".join(tree["info_exclude"]) + "\n")
    inner = tree.get("nested")
    if inner is not None and make_dir(root / inner["at"]):
        build(root / inner["at"], inner)
        git(root / inner["at"], *COMMIT)
        if inner["submodule"]:  # a gitlink in the outer index
            git(root, "add", "-f", "--", inner["at"])
    present = [f for f in files if (root / f).is_file()]
    for i in tree["tracked"]:
        if present:
            git(root, "add", "-f", "--", ":(literal)" + present[i % len(present)])


def make_dir(path: Path) -> bool:
    """mkdir -p, unless a file already has one of the names (then False)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        return False
    return True


def oracle(root: Path, *config: str) -> set[str]:
    """What git lists at `root` (with ``-c`` `config`), with each nested repository it
    lists as one entry replaced by what git lists inside it, and every file of ``.git``."""
    out = git(root, *config, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    listed = set()
    for entry in (os.fsdecode(p).rstrip("/") for p in out.split(b"\0") if p):
        if (root / entry / ".git").exists():
            listed |= {f"{entry}/{p}" for p in oracle(root / entry, *config)}
        else:
            listed.add(entry)
    own = {str(p.relative_to(root)) for p in (root / ".git").rglob("*") if not p.is_dir()}
    return listed | own


def kept_files(root: Path, collection: CollectionConfig) -> set[str]:
    top = Scanner(os.fsencode(root), None, Rules(collection)).scan()
    out: set[str] = set()

    def walk(node: ScannedDir) -> None:
        for child in node.children:
            if isinstance(child, ScannedDir):
                walk(child)
            elif isinstance(child, ScannedFile):
                out.add(os.fsdecode(child.rel))

    walk(top)
    return out


def same(got: set[str], expected: set[str]) -> None:
    assert got == expected, (
        f"kept but git ignores: {sorted(got - expected)}; git lists but left out: {sorted(expected - got)}"
    )


def test_the_scan_keeps_exactly_what_git_lists(request: pytest.FixtureRequest, global_excludes: Path) -> None:
    examples = 3000 if request.config.getoption("--slow") else 200

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(tree=trees)
    def check(tree: dict[str, Any]) -> None:
        global_excludes.write_text("\n".join(tree["global"]) + "\n")
        applied = tree["git_global_excludes"]
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "repo"
            build(root, tree)
            expected = oracle(root, *(() if applied else ("-c", "core.excludesFile=/dev/null")))
            collection = CollectionConfig("c", root, "warm", git_global_excludes=applied)
            same(kept_files(root, collection), expected)

    check()


def test_outside_a_repository_gitignore_files_apply_only_when_asked(request: pytest.FixtureRequest) -> None:
    examples = 1000 if request.config.getoption("--slow") else 60

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(tree=st.fixed_dictionaries({**REPO, "info_exclude": st.just([]), "tracked": st.just([])}))
    def check(tree: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "plain"
            build(root, tree)
            as_a_repo = {p for p in oracle(root) if not p.startswith(".git/")}
            shutil.rmtree(root / ".git")  # now a plain directory: git has no opinion of its own
            everything = {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}
            same(
                kept_files(root, CollectionConfig("c", root, "warm", gitignore_outside_repos=True)), as_a_repo
            )
            same(kept_files(root, CollectionConfig("c", root, "warm")), everything)

    check()
