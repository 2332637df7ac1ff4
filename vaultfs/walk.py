"""The one tree walker: every entry under a tree, or every distinct tree reachable.

A version is a tree of directory listings named by their SHA-256 (`model.encode_tree`),
so two walks cover every use: `walk` visits entries by path (restoring files, comparing
a source with a version, finding large files), and `reachable` visits each distinct
listing once however many versions or directories share it (the live set of prune,
what the index lacks, what the local catalog lacks). Where the listings come from is the
caller's `load`: the vault's verified trees, the catalog's raw bytes, a rebuild's
recovered content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from vaultfs.model import Entry, TreeId

Path = tuple[bytes, ...]  # the names from the walk's root down to an entry


def walk(
    load: Callable[[TreeId], Iterable[Entry]], root: TreeId, prefix: Path = ()
) -> Iterator[tuple[Path, Entry]]:
    """Every entry under `root`, depth first: a directory, then what it holds, in the order
    `load` lists them. A directory's listing is loaded only when the walk goes into it
    (after its own entry was yielded), so an error in it surfaces there."""
    for e in load(root):
        path = (*prefix, e.name)
        yield path, e
        if e.kind == "dir" and e.tree is not None:
            yield from walk(load, e.tree, path)


def reachable(
    load: Callable[[TreeId], Iterable[Entry] | None], roots: Iterable[TreeId], seen: set[TreeId] | None = None
) -> Iterator[tuple[TreeId, list[Entry] | None]]:
    """Each tree reachable from `roots` once, with its entries; None when `load` has no such
    tree (what it would reach is then unknown). Trees in `seen` are skipped, and every tree
    visited is added to it."""
    seen = set() if seen is None else seen
    stack = list(roots)
    while stack:
        tid = stack.pop()
        if tid in seen:
            continue
        seen.add(tid)
        found = load(tid)
        entries = None if found is None else list(found)
        if entries is not None:
            stack.extend(e.tree for e in entries if e.kind == "dir" and e.tree is not None)
        yield tid, entries
