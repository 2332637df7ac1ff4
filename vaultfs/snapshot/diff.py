"""What changed between two versions of a collection: counts, paths, mass removal.

The counts go into the version's `ChangeStats`; the paths of files modified or deleted
are what a cold collection warns about (and deleted paths leave the files cache); a
version that removes more of the previous version's files than ``max_removed`` allows
is a `MassRemoval` warning. Equal subtrees are skipped unread, and listings encoded by
this run are taken from the tree saver instead of the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vaultfs.config import RemovalLimit
from vaultfs.model import Entry, TreeId, VersionInfo
from vaultfs.vault import Vault


@dataclass(slots=True)
class Changes:
    """Files added, changed and removed by a version, against the one before it."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    modified: list[bytes] = field(default_factory=list)  # paths of the changed files
    deleted: list[bytes] = field(default_factory=list)  # paths of the removed files
    now_included: int = 0  # of the files added, those under an entry the last run left out


@dataclass(frozen=True, slots=True)
class MassRemoval:
    """A version that lacks more of the previous version's files than ``max_removed`` allows.

    It is still written (it says what the source held; the previous version keeps the
    files), but often the source is what failed: an unmounted volume, a failing disk.
    """

    removed: int
    previous_files: int
    previous_version: int
    limit: str  # max_removed as configured, e.g. "50%"


def diff_versions(
    vault: Vault,
    old: TreeId | None,
    new: TreeId,
    listings: dict[TreeId, list[Entry]],
    left_out: frozenset[bytes] = frozenset(),
) -> Changes:
    """Compare the tree `new` with `old` (None: everything is added). `left_out`: what the
    rules left out in the run that made `old`; a file added at or below one of them is
    counted as now included too (a rule no longer leaves it out)."""
    differ = _Differ(vault, listings, left_out)
    differ.diff(old, new, b"")
    return differ.changes


def mass_removal(limit: RemovalLimit, removed: int, latest: VersionInfo | None) -> MassRemoval | None:
    """The warning for a version that removed `removed` files, if `limit` is exceeded."""
    if latest is not None and limit.exceeded(removed, latest.stats.files):
        return MassRemoval(removed, latest.stats.files, latest.number, str(limit))
    return None


def top_in(path: bytes, paths: frozenset[bytes] | set[bytes]) -> bytes | None:
    """`path` or the directory above it that is in `paths`; None when there is none."""
    while True:
        if path in paths:
            return path
        cut = path.rfind(b"/")
        if cut < 0:
            return None
        path = path[:cut]


def under_any(path: bytes, paths: frozenset[bytes] | set[bytes]) -> bool:
    """Whether `path` or a directory above it is in `paths`."""
    return top_in(path, paths) is not None


class _Differ:
    def __init__(self, vault: Vault, listings: dict[TreeId, list[Entry]], left_out: frozenset[bytes]) -> None:
        self.vault = vault
        self.listings = listings
        self.left_out = left_out
        self.changes = Changes()

    def diff(self, old: TreeId | None, new: TreeId, rel: bytes) -> None:
        """Count files added, changed and removed; equal subtrees are skipped unread."""
        if old == new:
            return
        stats = self.changes
        before = {e.name: e for e in self.vault.tree(old)} if old is not None else {}
        names = set()
        listing = self.listings.get(new)
        for e in listing if listing is not None else self.vault.tree(new):
            names.add(e.name)
            o = before.get(e.name)
            path = rel + b"/" + e.name if rel else e.name
            if o is not None and o.kind != e.kind:
                self.count_removed(o, path)
                o = None
            if e.kind == "dir" and e.tree is not None:
                self.diff(o.tree if o is not None else None, e.tree, path)
            elif e.kind == "file":
                if o is None:
                    stats.added += 1
                    stats.now_included += bool(self.left_out) and under_any(path, self.left_out)
                elif o.content_key != e.content_key:  # a sparse file's size and map count too
                    stats.changed += 1
                    stats.modified.append(path)
        for name, o in before.items():
            if name not in names:
                self.count_removed(o, rel + b"/" + name if rel else name)

    def count_removed(self, old: Entry, rel: bytes) -> None:
        if old.kind == "file":
            self.changes.removed += 1
            self.changes.deleted.append(rel)
        elif old.kind == "dir" and old.tree is not None:
            for e in self.vault.tree(old.tree):
                self.count_removed(e, rel + b"/" + e.name)
