"""Git's ignore rules, with git itself as the oracle (issue 13, points 1 and 2).

Random trees get random nested ``.gitignore`` files (negations, ``**``, anchors, trailing
slashes, directories named like patterns) and some files ``git add -f``-ed. The files the
real scan keeps (`vaultfs.source.Scanner` with the collection's `vaultfs.ignore.Rules`, on
the real files) must be exactly ``git ls-files --cached --others --exclude-standard`` plus
everything under ``.git/``: tracked files are kept whatever the patterns say, and nothing
below an excluded directory comes back. ``--slow`` runs thousands of examples.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultfs.config import CollectionConfig
from vaultfs.ignore import Rules
from vaultfs.source import ScannedDir, ScannedFile, Scanner

NAMES = ("a", "b", "build", "x.o", "y.txt", "foo", "*.o", "[ab]", "a b", "#c", "!n", "deep")
SEGMENTS = ("a", "b", "build", "*", "**", "*.o", "foo", "[ab]", "b?ild", "\\#c", "\\!n", "de*", "x.o")


@pytest.fixture(autouse=True)
def git_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither this machine's git config nor the user's global excludes play a part."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


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
trees = st.fixed_dictionaries(
    {
        "files": st.lists(paths, min_size=1, max_size=14, unique=True),
        "ignores": st.dictionaries(  # directory (one of the files' parents) → its .gitignore lines
            st.sampled_from(("", "a", "b", "build", "deep", "a/b", "foo/deep", "[ab]")),
            st.lists(pattern(), min_size=1, max_size=5),
            max_size=4,
        ),
        "info_exclude": st.lists(pattern(), max_size=2),
        "tracked": st.lists(st.integers(0, 13), max_size=4),
    }
)


def build(root: Path, tree: dict[str, object]) -> None:
    root.mkdir()
    git(root, "init", "-q")
    files: list[str] = tree["files"]  # type: ignore[assignment]
    for rel in files:
        path = root / rel
        if make_dir(path.parent) and not path.exists():
            path.write_text(rel)
    for directory, lines in tree["ignores"].items():  # type: ignore[attr-defined]
        if make_dir(root / directory):
            (root / directory / ".gitignore").write_text("\n".join(lines) + "\n")
    (root / ".git/info").mkdir(exist_ok=True)
    (root / ".git/info/exclude").write_text("\n".join(tree["info_exclude"]) + "\n")  # type: ignore[arg-type]
    present = [f for f in files if (root / f).is_file()]
    for i in tree["tracked"]:  # type: ignore[attr-defined]
        if present:
            git(root, "add", "-f", "--", ":(literal)" + present[i % len(present)])


def make_dir(path: Path) -> bool:
    """mkdir -p, unless a file already has one of the names (then False)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        return False
    return True


def oracle(root: Path) -> set[str]:
    out = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    listed = {os.fsdecode(p) for p in out.split(b"\0") if p}
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


def test_the_scan_keeps_exactly_what_git_lists(request: pytest.FixtureRequest) -> None:
    examples = 3000 if request.config.getoption("--slow") else 200

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(tree=trees)
    def check(tree: dict[str, object]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "repo"
            build(root, tree)
            expected = oracle(root)
            got = kept_files(root, CollectionConfig("c", root, "warm"))
            assert got == expected, (
                f"kept but git ignores: {sorted(got - expected)}; "
                f"git lists but left out: {sorted(expected - got)}"
            )

    check()
