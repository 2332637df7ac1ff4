"""Verifying a catalog: the local LMDB (rung 1 of the ladder, and ``vaultfs check``), and
what recovered index content lacks (rungs 2-5 install a version only when its trees are
there; files whose blobs are gone are reported as lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vaultfs.catalog import Catalog
from vaultfs.errors import CorruptionError
from vaultfs.index.objects import IndexContent, VersionKey
from vaultfs.model import (
    BadRecord,
    BandId,
    BandInfo,
    BlobId,
    Entry,
    LostBlob,
    TreeId,
    VersionInfo,
    decode_record,
    decode_tree,
    tree_id,
)
from vaultfs.output import display_path


@dataclass(slots=True)
class CatalogWalk:
    """Result of `verify_catalog`: problems, and which bands each version's files use."""

    problems: list[str] = field(default_factory=list)
    version_bands: dict[VersionKey, set[BandId]] = field(default_factory=dict)
    versions: dict[VersionKey, VersionInfo] = field(default_factory=dict)
    trees: int = 0
    blobs: int = 0
    lost: set[BlobId] = field(default_factory=set)  # named by versions, recorded as lost


def verify_catalog(catalog: Catalog) -> CatalogWalk:
    """Check the local catalog's structure: every record of every database passes its
    checksum (trees: hashes to its id; scrub rows are not checked: a damaged one reads as
    absent, `schema.DISPOSABLE`), every record parses, and every version's trees,
    file blobs and their bands are present (a blob recorded as lost is listed in `lost`,
    not a problem: its bytes are gone, the catalog is whole). CorruptionError when LMDB
    cannot be read or any record is damaged (nothing read from such a catalog can be
    trusted); other problems are listed in the result."""
    damaged = catalog.damaged_records()
    if damaged:
        raise CorruptionError(
            "the local catalog is damaged: "
            + ", ".join(damaged[:3])
            + (" and more" if len(damaged) > 3 else "")
            + ": run `vaultfs index rebuild`"
        )
    walk = CatalogWalk()
    for key, raw in catalog.iter_raw("versions"):
        try:
            v = decode_record(
                VersionInfo.from_json, raw, f"local catalog: version record {key!r} is unreadable"
            )
        except BadRecord as e:
            walk.problems.append(str(e))
            continue
        walk.versions[v.collection, v.number] = v
    bands = {}
    for key, raw in catalog.iter_raw("bands"):
        try:
            b = decode_record(BandInfo.from_json, raw, f"local catalog: band record {key!r} is unreadable")
            bands[b.band] = b
        except BadRecord as e:
            walk.problems.append(str(e))
    trees = _TreeWalk(catalog, walk, bands)
    for vk, v in sorted(walk.versions.items()):
        used = trees.visit(v.root, f"{vk[0]}@v{vk[1]}")
        walk.version_bands[vk] = set(used or ()) | set(b for b in v.bands if b in bands)
    return walk


class _TreeWalk:
    """The trees of `verify_catalog`, each visited once: which bands a tree's files use
    (None: the tree is incomplete), problems added to the walk as they are found."""

    def __init__(self, catalog: Catalog, walk: CatalogWalk, bands: dict[BandId, BandInfo]) -> None:
        self.catalog, self.walk, self.bands = catalog, walk, bands
        self.tree_bands: dict[TreeId, set[BandId] | None] = {}  # None: incomplete
        self.lost = catalog.lost_blobs()

    def visit(self, tid: TreeId, where: str) -> set[BandId] | None:
        if tid in self.tree_bands:
            return self.tree_bands[tid]
        entries = self._entries(tid, where)
        used: set[BandId] | None = None if entries is None else set()
        for ent in entries or ():
            if ent.kind == "dir" and ent.tree is not None:
                sub = self.visit(ent.tree, where)
                if sub is None:
                    used = None
                elif used is not None:
                    used |= sub
            elif ent.kind == "file" and ent.blob is not None and ent.hardlink is None:
                band = self._file_band(ent, where)
                if band is None:
                    used = None
                elif used is not None and band:
                    used.add(band)
        self.tree_bands[tid] = used
        return used

    def _entries(self, tid: TreeId, where: str) -> tuple[Entry, ...] | None:
        """The tree's entries; None (a problem noted) when it is missing or damaged."""
        raw = self.catalog.tree_bytes(tid)
        if raw is None or tree_id(raw) != tid:
            state = "missing" if raw is None else "corrupt (does not hash to its id)"
            self.walk.problems.append(f"local catalog: tree {tid.hex()[:16]} of {where} is {state}")
            return None
        self.walk.trees += 1
        try:
            return decode_tree(raw)
        except (ValueError, KeyError) as e:
            self.walk.problems.append(f"local catalog: tree {tid.hex()[:16]} does not parse: {e}")
            return None

    def _file_band(self, ent: Entry, where: str) -> BandId | Literal[""] | None:
        """The band holding a file's blob; "" when the blob is recorded as lost (not
        damage), None (a problem noted) when no band holds it."""
        assert ent.blob is not None
        ref = self.catalog.blob(ent.blob)
        if ref is None and ent.blob in self.lost:  # known to be lost: not damage
            self.walk.lost.add(ent.blob)
            return ""
        if ref is None:
            self.walk.problems.append(
                f"local catalog: {where} refers to blob {ent.blob.hex()[:16]} "
                f"({display_path(ent.name)}) which no band holds"
            )
            return None
        self.walk.blobs += 1
        if ref.band not in self.bands:
            self.walk.problems.append(
                f"local catalog: blob {ent.blob.hex()[:16]} lies in band {ref.band}, "
                "which the catalog does not know"
            )
        return ref.band


def check_content(content: IndexContent) -> dict[VersionKey, list[str]]:
    """For each version: what it lacks in `content` (trees, blob map, bands); empty = whole."""
    return {
        vk: [f"tree {t.hex()[:16]}" for t in trees] + [f"blob {b.hex()[:16]}" for b in blobs]
        for vk, (trees, blobs) in content_gaps(content).items()
    }


def content_gaps(content: IndexContent) -> dict[VersionKey, tuple[list[TreeId], list[BlobId]]]:
    """For each version: the trees it lacks in `content` (without them it cannot be
    listed at all) and the file blobs the blob map lacks (those files' bytes)."""
    out: dict[VersionKey, tuple[list[TreeId], list[BlobId]]] = {}
    done: dict[TreeId, tuple[list[TreeId], list[BlobId]]] = {}

    def visit(tid: TreeId) -> tuple[list[TreeId], list[BlobId]]:
        if tid in done:
            return done[tid]
        done[tid] = ([], [])
        raw = content.trees.get(tid)
        if raw is None:
            done[tid] = ([tid], [])
            return done[tid]
        trees: list[TreeId] = []
        blobs: list[BlobId] = []
        for e in decode_tree(raw):
            if e.kind == "dir" and e.tree is not None:
                sub = visit(e.tree)
                trees += sub[0]
                blobs += sub[1]
            elif e.kind == "file" and e.blob is not None and e.hardlink is None:
                ref = content.blobs.get(e.blob)
                if ref is None or ref.band not in content.bands:
                    blobs.append(e.blob)
        done[tid] = (trees, blobs)
        return done[tid]

    for vk, v in content.versions.items():
        trees, blobs = visit(v.root)
        out[vk] = (trees, list(dict.fromkeys(blobs)))
    return out


def lost_paths(content: IndexContent, root: TreeId, lost: dict[BlobId, LostBlob]) -> list[str]:
    """Display paths of the files under `root` whose blob is in `lost`."""
    out: list[str] = []
    stack: list[tuple[TreeId, bytes]] = [(root, b"")]
    while stack:
        tid, prefix = stack.pop()
        raw = content.trees.get(tid)
        if raw is None:
            continue
        for e in decode_tree(raw):
            path = prefix + b"/" + e.name if prefix else e.name
            if e.kind == "dir" and e.tree is not None:
                stack.append((e.tree, path))
            elif e.kind == "file" and e.blob is not None and e.blob in lost:
                out.append(display_path(path))
    return sorted(out)
