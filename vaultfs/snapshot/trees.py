"""The tree saver: directory listings encoded bottom-up, reusing the directory memo.

A directory whose entries' stat data match the latest version's (`Memos`, looked up by
the scan; the memo rows are in `catalog.schema`) keeps that version's listing; the rest
are encoded from the scan and the files the file saver read. `TreeSaver` keeps what the
diff and the commit need: the listings encoded in this run, the encodings not yet in the
catalog, the memo rows for the next run, and the files and bytes of the new version.
"""

from __future__ import annotations

from dataclasses import replace

from vaultfs.catalog import DirMemo, FileCacheLookup
from vaultfs.model import Entry, TreeId, VersionInfo, encode_tree, tree_id
from vaultfs.source import ScannedDir, ScannedFile, dir_entry, file_entry
from vaultfs.vault import Vault


class Memos:
    """The directory memo rows of the collection, looked up during the scan."""

    def __init__(self, cache: FileCacheLookup, latest: VersionInfo | None) -> None:
        self._cache = cache
        self.found: dict[bytes, DirMemo] = {}
        # The rows describe the version whose root they name; once another version is the
        # latest (one adopted from the store after a crash), they describe nothing reliable.
        self.valid = latest is not None and cache.dir_memo_root() == latest.root

    def signature(self, rel: bytes) -> bytes | None:
        memo = self._cache.dir_memo(rel)
        if memo is None:
            return None
        self.found[rel] = memo
        return memo.signature


class TreeSaver:
    """Builds the trees of one version; what it produces is read by the diff and the commit."""

    def __init__(self, vault: Vault, memos: Memos) -> None:
        self.vault = vault
        self.memos = memos
        self.new: dict[TreeId, bytes] = {}  # encodings not yet in the catalog
        self.listings: dict[TreeId, list[Entry]] = {}  # encoded in this run
        self.memo_rows: list[tuple[bytes, DirMemo]] = []
        self.dirs = 0  # directories built
        self.reused = 0  # of them, recorded trees taken over as they were (the rest: encoded)
        self.files = 0  # files in the new version
        self.size = 0  # their bytes

    @property
    def memos_replaced(self) -> bool:
        """Whether the memo rows must be rewritten (some listing was encoded, or the rows
        on record describe another version)."""
        return self.reused != self.dirs or not self.memos.valid

    def build(self, node: ScannedDir) -> TreeId:
        """Encode a directory's listing bottom-up; remember every new listing for the diff.

        An unchanged directory (`ScannedDir.unchanged`) gets its recorded tree back when
        its subdirectories' trees are as recorded too, else the recorded listing with
        their new trees. Directories whose listing is complete and plain get a memo row
        for the next run (`memo_rows`).
        """
        self.dirs += 1
        if node.unchanged:
            return self._reuse(node)
        entries: list[Entry] = []
        subtrees: list[tuple[bytes, TreeId]] = []
        files = size = 0
        complete = node.signature is not None
        for child in node.children:
            if isinstance(child, ScannedDir):
                if child.unreadable:
                    complete = False
                else:
                    sub = self.build(child)
                    subtrees.append((child.name, sub))
                    entries.append(dir_entry(child, sub))
            elif isinstance(child, ScannedFile):
                if not child.skipped and child.blob is not None:
                    entries.append(file_entry(child))
                    files += 1
                    size += child.st.st_size
                else:
                    complete = False
            else:
                entries.append(child)
        self.files += files
        self.size += size
        tid = self.store(entries)
        if complete and node.signature is not None:
            self.memo_rows.append((node.rel, DirMemo(node.signature, tid, files, size, tuple(subtrees))))
        return tid

    def _reuse(self, node: ScannedDir) -> TreeId:
        """An unchanged directory: its recorded tree, or the recorded listing with the new
        trees of subdirectories that changed inside (their own entries' stat data do not
        show that). The memo's trees are the latest version's, so they are in the catalog."""
        memo = self.memos.found[node.rel]
        self.files += memo.files
        self.size += memo.size
        subtrees = tuple(
            (child.name, None if child.unreadable else self.build(child))
            for child in node.children
            if isinstance(child, ScannedDir)
        )
        if subtrees == memo.subtrees:
            self.memo_rows.append((node.rel, memo))
            self.reused += 1
            return memo.tree
        now = dict(subtrees)
        entries = []
        for e in self.vault.tree(memo.tree):
            if e.kind == "dir" and e.name in now:
                sub = now[e.name]
                if sub is None:
                    continue  # unreadable this time: left out, as a rebuilt listing would
                e = replace(e, tree=sub)
            entries.append(e)
        tid = self.store(entries)
        if all(sub is not None for _, sub in subtrees):
            complete = tuple((name, sub) for name, sub in subtrees if sub is not None)
            self.memo_rows.append((node.rel, replace(memo, tree=tid, subtrees=complete)))
        return tid

    def store(self, entries: list[Entry]) -> TreeId:
        """Encode one listing (canonically: `model.encode_tree`) and keep it for the diff,
        and for the commit when the catalog lacks it; its id. A hub stores the listings its
        client sends through this, so each is re-encoded and its id recomputed here."""
        encoded = encode_tree(entries)
        tid = tree_id(encoded)
        self.listings[tid] = entries
        if tid not in self.new and not self.vault.catalog.has_tree(tid):
            self.new[tid] = encoded
        return tid
