"""What the versions of a vault look like as a read-only filesystem (no FUSE here).

Layout::

    /                         root (0555)
    /.vaultfs/status          human-readable: vault, collections, versions, bands by state,
                              restores in flight, the restore watcher
    /.vaultfs/restores.json   every band restoring, restored or cached (as `restore status --json`)
    /<collection>/            one directory per collection of the config (and any other the
                              catalog holds), empty until its first version; mtime = its
                              newest version (the mount's start while it has none)
    /<collection>/v<N>/…      every version; the version directory has the source root's mode,
                              owner, mtime and xattrs (records from before vaultfs kept
                              them: 0555 root:root, mtime = snapshot time)
    /<collection>/latest      symlink → v<newest>

`VaultView` owns the filesystem's shape: the node table, lookup, listings and
`open`. The records it answers with (`nodes`), what it refuses (`errors`), the
attributes and extended attributes of its nodes (`attrs`), the reads of open files
(`reads`) and the /.vaultfs/ files (`status`) are their own modules; fuse_ops and the
tests use this one, which re-exports what they need from those (`__all__`).

Everything except file content is answered from the local catalog (LMDB): each
call opens its own short read transaction, so a version committed while mounted
shows up at the next lookup or listing of its collection directory.

readdir offsets (stable across remounts, like inode numbers, `vaultfs.mount.nodes`):
inside a version they are positions in the immutable tree (+1); in the root and
collection directories (which change while mounted) an entry's offset is its
inode number, entries listed in inode order.

Lookup counts (the kernel's references) are kept per inode: `remember` after
each successful lookup/readdirplus entry, `forget` when the kernel drops them; a
node is dropped when its count reaches zero, so the node table holds only what
the kernel holds.

Prepared directories: versions never change, so a version directory's answers are
made once: each entry's node and its reply (the attributes as fuse_ops hands them to
the kernel, `VaultView.reply`), at the first listing of the directory or lookup of that
name (a lookup makes only its own: a directory's link count decodes its subdirectories).
Later readdirplus and lookups of that directory (the kernel asks again when it drops
its own cache, and `ls -lR` after `find`) answer from that table without
decoding the tree or building anything (`Prepared`, an LRU of at most
`PREPARED_ENTRIES` entries). The root, /.vaultfs/ and the collection directories
change while mounted and are answered afresh each time.

Memory bound: the node table (~0.3 KiB per inode the kernel references), the
decoded-tree cache (`TREE_CACHE_BYTES` of encoded trees, ~4x that decoded), the
prepared directories (`PREPARED_ENTRIES` entries, ~1 KiB each with the node and decoded
entry they keep alive — shared with the node table while the kernel holds the inode:
≤ 32 MiB); the band readers are bounded in `vaultfs.mount.reads`.

Band states (`vaultfs.archive`): opening a file whose band is not readable now
(archived, restoring) raises `Archived` naming the band; the caller decides
about a restore. The view counts open handles per band (`in_use`, so the band
cache never evicts a band being read) and when each band was last opened
(`last_used`).

Concurrency: the listing methods are called from one thread (the trio loop); reads
of open files run in worker threads (`vaultfs.mount.reads`).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vaultfs import archive, testpoints
from vaultfs.errors import CorruptionError
from vaultfs.model import (
    BandId,
    BandInfo,
    BlobId,
    TreeId,
    VersionInfo,
    from_text,
    readable_now,
    to_text,
    tree_rows,
)
from vaultfs.mount.attrs import EMPTY_SHA256, LIVE_TIMEOUT, band_info, blob_ref, node_attr, xattr, xattr_names
from vaultfs.mount.errors import (
    Archived,
    NoAttribute,
    NotADirectory,
    NotASymlink,
    NotFound,
    ReadOnly,
    Unsupported,
    VfsError,
)
from vaultfs.mount.nodes import (
    IMMUTABLE_TIMEOUT,
    MAX_INO,
    ROOT_INO,
    Attr,
    Node,
    NodeKind,
    entry_prefix,
    hashed_ino,
    inode_number,
)
from vaultfs.mount.reads import BandReaders, OpenFile
from vaultfs.mount.status import MountInfo, StatusFile, restores_json, state_text, status_text
from vaultfs.output import display_path
from vaultfs.vault import Vault, lost_message

__all__ = [  # this module's own names, and the ones fuse_ops and the tests find here
    "BLKSIZE",
    "IMMUTABLE_TIMEOUT",
    "LIVE_TIMEOUT",
    "ROOT_INO",
    "TREE_CACHE_BYTES",
    "Archived",
    "Attr",
    "MountInfo",
    "NoAttribute",
    "Node",
    "NotADirectory",
    "NotASymlink",
    "NotFound",
    "OpenFile",
    "Prepared",
    "ReadOnly",
    "StatusFile",
    "Unsupported",
    "VaultView",
    "VfsError",
    "inode_number",
    "start_threads",
    "state_text",
]

BLKSIZE = 1024 * 1024  # st_blksize: cat/cp then read 1 MiB at a time (docs/mount.md)
TREE_CACHE_BYTES = 16 * 1024 * 1024
PREPARED_ENTRIES = 32768  # entries of prepared version directories kept (LRU of directories)
META_DIR = b".vaultfs"
STATUS = b"status"
RESTORES = b"restores.json"
LATEST = b"latest"


@dataclass(slots=True)
class _Listing:
    """A tree as the mount uses it, made once per tree id (`VaultView.listing`): its
    entries' names and JSON objects (`tree_rows`; an `Entry` is made from one only when a
    node's `entry` is asked for), where each name is, and how many are directories."""

    names: list[bytes]
    rows: list[dict[str, Any]]
    index: dict[bytes, int]
    subdirs: int
    cost: int


@dataclass(slots=True, eq=False)
class Prepared:
    """A version directory's answers, each made once (see the module docstring): entry i
    of its tree (``listing.names[i]``, ``listing.rows[i]``) is ``nodes[i]``, whose
    attributes the kernel gets as ``replies[i]`` (both None until first asked for: a
    lookup of one name makes one)."""

    tree: TreeId
    listing: _Listing
    nodes: list[Node | None]
    replies: list[Any]


class VaultView:
    """The filesystem over one opened (read-only) vault.

    Every method that takes an inode raises `NotFound` for one the kernel has
    forgotten. `CorruptionError` (and other `VaultError`) from the catalog or a
    band pass through: they mean EIO.
    """

    def __init__(self, vault: Vault, info: MountInfo | None = None) -> None:
        self.vault = vault
        self.catalog = vault.catalog
        self.info = info or MountInfo(store=vault.config.store)
        self._nodes: dict[int, Node] = {}
        root = Node(ROOT_INO, "root", ("root",), refs=1)
        self._nodes[ROOT_INO] = root
        self._trees: OrderedDict[TreeId, _Listing] = OrderedDict()
        self._tree_bytes = 0
        self._prepared: OrderedDict[int, Prepared] = OrderedDict()  # directory inode → table
        self._prepared_entries = 0
        # How a node's attributes are handed to the kernel (fuse_ops sets its converter):
        # made once per entry of a prepared directory.
        self.reply: Callable[[Attr], Any] = lambda a: a
        # Files whose every byte was read in order and matched their SHA-256 since the
        # kernel took the inode (fuse_ops lets the kernel keep their pages: docs/mount.md).
        self.verified: set[int] = set()
        self.readers = BandReaders(vault)
        self.in_use: Counter[BandId] = Counter()  # open handles per band
        self.last_used: dict[BandId, int] = {}  # band → when a file of it was last opened (ns)

    def close(self) -> None:
        """Stop the threads the view started (reading ahead); the vault stays open."""
        self.readers.close()

    # ---- inodes and lookup counts ------------------------------------------------------------

    def node(self, ino: int) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            raise NotFound(f"inode {ino} is not known (forgotten)")
        return node

    def remember(self, node: Node) -> None:
        """The kernel took one more reference to `node` (lookup, readdirplus entry)."""
        known = self._nodes.get(node.ino)
        if known is None:
            self._nodes[node.ino] = node
            known = node
            node.refs = 0  # a prepared directory's node the kernel had forgotten
        known.refs += 1

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.refs -= count
        if node.refs <= 0:
            del self._nodes[ino]
            self.verified.discard(ino)

    @property
    def inode_count(self) -> int:
        return len(self._nodes)

    def _make(self, kind: NodeKind, key: tuple[object, ...], **fields: object) -> Node:
        """The node for `key`: the known one if the kernel holds it, else a new one."""
        ino = inode_number(*key)
        while True:
            known = self._nodes.get(ino)
            if known is None:
                return Node(ino, kind, key, **fields)  # type: ignore[arg-type]
            if known.key == key:
                return known
            ino = ino + 1 if ino < MAX_INO else 2  # collision: next free number

    # ---- lookup --------------------------------------------------------------------------

    def lookup(self, parent_ino: int, name: bytes) -> Node:
        """The child `name` of a directory; NotFound if there is none. Counts are unchanged."""
        parent = self.node(parent_ino)
        if parent.kind == "root":
            return self._lookup_in_root(name)
        if parent.kind == "meta":
            return self._lookup_in_meta(name)
        if parent.kind == "collection":
            return self._lookup_in_collection(parent, name)
        return self.lookup_reply(parent_ino, name)[0]

    def lookup_reply(self, parent_ino: int, name: bytes) -> tuple[Node, Any]:
        """`lookup` and the node's attributes as the kernel gets them (`reply`); inside a
        version from the directory's prepared table."""
        parent = self.node(parent_ino)
        if parent.tree is None:
            if parent.kind in ("root", "meta", "collection"):
                node = self.lookup(parent_ino, name)
                return node, self.reply(self.attr(node))
            raise NotADirectory(parent.path)
        table = self.prepared(parent)
        pos = table.listing.index.get(name)
        if pos is None:
            raise NotFound(name)
        return self._answer(parent, table, pos)

    def _lookup_in_root(self, name: bytes) -> Node:
        """``.vaultfs`` or a collection."""
        if name == META_DIR:
            return self._meta_dir()
        coll = name.decode("utf-8", "surrogateescape")
        if coll not in self.collections():
            raise NotFound(name)
        return self._collection(coll)

    def collections(self) -> list[str]:
        """The collections shown: the config's, versions or not (an empty directory says
        "nothing backed up yet" where a missing one would say "misconfigured"), and any
        other the catalog holds versions of (a collection since dropped from the config)."""
        configured = [c.name for c in self.vault.config.collections]
        return configured + sorted(set(self.catalog.collections()) - set(configured))

    def _lookup_in_meta(self, name: bytes) -> Node:
        if name == STATUS:
            return self._make("status", ("status",))
        if name == RESTORES:
            return self._make("restores", ("restores",))
        raise NotFound(name)

    def _lookup_in_collection(self, parent: Node, name: bytes) -> Node:
        """``latest`` or ``vN``."""
        if name == LATEST:
            if self.catalog.latest_version(parent.collection) is None:
                raise NotFound(name)
            return self._make("latest", ("latest", parent.collection), collection=parent.collection)
        number = _version_number(name)
        version = None if number is None else self.catalog.version(parent.collection, number)
        if version is None:
            raise NotFound(name)
        return self._version(version)

    def _meta_dir(self) -> Node:
        return self._make("meta", ("meta",))

    def _collection(self, name: str) -> Node:
        return self._make("collection", ("collection", name), collection=name)

    def caches_misses(self, parent_ino: int) -> bool:
        """Whether the kernel may remember that a name is not in this directory for as long
        as it keeps the directory: inside a version (never changes), not above it."""
        node = self._nodes.get(parent_ino)
        return node is not None and node.tree is not None

    def _version(self, v: VersionInfo) -> Node:
        """A version directory: with the source root's mode, owner, mtime and xattrs when the
        record has them (so the kernel's default_permissions guard what the source guarded)."""
        root = v.root_meta.entry(v.root) if v.root_meta is not None else None
        return self._make(
            "version",
            ("version", v.collection, v.number),
            collection=v.collection,
            version=v.number,
            tree=v.root,
            created_ns=v.created_ns,
            decoded=root,
        )

    def _child(self, parent: Node, name: bytes, row: dict[str, Any]) -> Node:
        """The node of entry `name` (`row`: its JSON object) of directory `parent` (called
        for every entry listed)."""
        path = name if not parent.path else parent.path + b"/" + name
        kind = row["kind"]
        hardlink = row.get("hardlink") if kind == "file" else None
        identity = path if hardlink is None else from_text(hardlink)
        key = ("entry", parent.collection, parent.version, identity)
        tree = TreeId(bytes.fromhex(row["tree"])) if kind == "dir" else None
        # inode_number(*key), without re-encoding the collection and version for each entry
        ino = hashed_ino(entry_prefix(parent.collection, parent.version) + identity)
        known = self._nodes.get(ino)
        if known is None:
            return Node(ino, "entry", key, parent.collection, parent.version, path, None, tree, 0, 0, row)
        if known.key == key:
            return known
        return self._make(
            "entry", key, collection=parent.collection, version=parent.version, path=path, tree=tree, row=row
        )

    # ---- listing --------------------------------------------------------------------------

    def children(self, ino: int, after: int = 0) -> Iterator[tuple[bytes, Node, int]]:
        """(name, node, offset) of a directory's entries with offset > `after`, in offset order.

        Offsets are stable keys (see the module docstring), so a listing resumed
        at an offset neither repeats nor skips entries. "." and ".." are the kernel's.
        """
        node = self.node(ino)
        if node.kind == "root":
            items = [(META_DIR, self._meta_dir())]
            items += [(c.encode("utf-8", "surrogateescape"), self._collection(c)) for c in self.collections()]
            yield from _by_inode(items, after)
        elif node.kind == "meta":
            yield from _by_inode(
                [
                    (STATUS, self._make("status", ("status",))),
                    (RESTORES, self._make("restores", ("restores",))),
                ],
                after,
            )
        elif node.kind == "collection":
            versions = self.catalog.versions(node.collection)
            items = [(f"v{v.number}".encode(), self._version(v)) for v in versions]
            if versions:
                items.append(
                    (LATEST, self._make("latest", ("latest", node.collection), collection=node.collection))
                )
            yield from _by_inode(items, after)
        elif node.tree is not None:
            table = self.prepared(node)
            names = table.listing.names
            for pos in range(max(after, 0), len(names)):
                yield names[pos], self._answer(node, table, pos)[0], pos + 1
        else:
            raise NotADirectory(node.path)

    def replies(self, ino: int, after: int = 0) -> Iterator[tuple[bytes, Node, Any, int]]:
        """`children` with each node's attributes as the kernel gets them (`reply`): what
        readdirplus answers; inside a version straight from the prepared table."""
        node = self.node(ino)
        if node.tree is None:
            for name, child, offset in self.children(ino, after):
                yield name, child, self.reply(self.attr(child)), offset
            return
        table = self.prepared(node)
        names, nodes, replies = table.listing.names, table.nodes, table.replies
        for pos in range(max(after, 0), len(names)):
            made = nodes[pos]
            if made is None:
                yield names[pos], *self._answer(node, table, pos), pos + 1
            else:
                yield names[pos], made, replies[pos], pos + 1

    def prepared(self, directory: Node) -> Prepared:
        """The prepared table of a version directory (made at its first use; LRU)."""
        assert directory.tree is not None
        table = self._prepared.get(directory.ino)
        if table is not None and table.tree == directory.tree:
            self._prepared.move_to_end(directory.ino)
            return table
        listing = self.listing(directory.tree)
        n = len(listing.names)
        table = Prepared(directory.tree, listing, [None] * n, [None] * n)
        old = self._prepared.pop(directory.ino, None)
        self._prepared_entries += n - (len(old.nodes) if old is not None else 0)
        self._prepared[directory.ino] = table
        while self._prepared_entries > PREPARED_ENTRIES and len(self._prepared) > 1:
            _, dropped = self._prepared.popitem(last=False)
            self._prepared_entries -= len(dropped.nodes)
        return table

    def _answer(self, directory: Node, table: Prepared, pos: int) -> tuple[Node, Any]:
        """Entry `pos` of a prepared directory: its node and reply, made at first use."""
        node = table.nodes[pos]
        if node is None:
            listing = table.listing
            node = table.nodes[pos] = self._child(directory, listing.names[pos], listing.rows[pos])
            table.replies[pos] = self.reply(self.attr(node))
        return node, table.replies[pos]

    def listing(self, tree: TreeId) -> _Listing:
        """A decoded tree from a bounded LRU (trees are shared between versions)."""
        listing = self._trees.get(tree)
        if listing is not None:
            self._trees.move_to_end(tree)
            return listing
        raw = self.catalog.tree_bytes(tree)
        if raw is None:
            raise CorruptionError(
                f"tree {tree.hex()[:16]} is missing from the local catalog: run `vaultfs index rebuild`"
            )
        rows = tree_rows(raw)
        names = [from_text(row["name"]) for row in rows]
        subdirs = sum(1 for row in rows if row["kind"] == "dir")
        listing = _Listing(names, rows, {name: i for i, name in enumerate(names)}, subdirs, len(raw))
        self._trees[tree] = listing
        self._tree_bytes += listing.cost
        while self._tree_bytes > TREE_CACHE_BYTES and len(self._trees) > 1:
            _, old = self._trees.popitem(last=False)
            self._tree_bytes -= old.cost
        return listing

    # ---- attributes (`vaultfs.mount.attrs`) ---------------------------------------------------

    def attr(self, node: Node) -> Attr:
        """stat(2) of a node, from the catalog only."""
        return node_attr(self, node)

    def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if node.kind == "latest":
            latest = self.catalog.latest_version(node.collection)
            if latest is None:
                raise NotFound(node.collection)
            return f"v{latest.number}".encode()
        if node.entry is None or node.entry.kind != "symlink" or node.entry.target is None:
            raise NotASymlink(node.path)
        return node.entry.target

    def xattr_names(self, ino: int) -> list[bytes]:
        return xattr_names(self.catalog, self.node(ino))

    def xattr(self, ino: int, name: bytes) -> bytes:
        return xattr(self.catalog, self.node(ino), name, self.vault.config)

    # ---- content ---------------------------------------------------------------------------

    def open(self, ino: int) -> OpenFile | StatusFile:
        """A handle to read a file; Archived when its band needs a restore first."""
        node = self.node(ino)
        if node.kind == "status":
            return StatusFile(self.status_text())
        if node.kind == "restores":
            return StatusFile(self.restores_json())
        e = node.entry
        if e is None or e.kind != "file":
            raise NotFound(node.path)  # the kernel opens only regular files through open()
        try:
            ref = blob_ref(self.catalog, e)
        except CorruptionError:
            lost = self.catalog.lost_blob(e.blob) if e.blob is not None else None
            if lost is None:
                raise
            # EIO, and one log line (fuse_ops) naming the file, its version and why.
            raise CorruptionError(
                f"{node.collection}@v{node.version}/{display_path(node.path)}: {lost_message(lost)}"
            ) from None
        if ref is not None:
            info = band_info(self.catalog, ref.band)
            if info.state == "cached" and not self.vault.band_cached(ref.band):
                info = self._cache_copy_lost(info)
            if not readable_now(info):
                file = f"{node.collection}@v{node.version}/{to_text(node.path)}"
                raise Archived(ref.band, info.state, file)
            self.in_use[ref.band] += 1
            self.last_used[ref.band] = time.time_ns()
        fault = testpoints.fails("read:" + to_text(e.name))  # tests only (vaultfs/testpoints.py)
        return OpenFile(self.readers, ref, e.blob or BlobId(EMPTY_SHA256), e.size, fault, e.sparse)

    def _cache_copy_lost(self, info: BandInfo) -> BandInfo:
        """The catalog says `cached` but the local copy is gone (deleted to free space, a
        wiped cache directory): record what the band is without it, so the file reads
        from S3 if it can, or answers ENODATA and is restored again — not EIO, which
        would say the backup is damaged."""
        return self.readers.demote(
            info, archive.state_without_cache(info), f"its cached copy in {self.vault.cache_dir} is gone"
        )

    def release(self, handle: OpenFile | StatusFile) -> None:
        """A handle from `open` was closed."""
        if isinstance(handle, OpenFile) and handle.ref is not None:
            band = handle.ref.band
            self.in_use[band] -= 1
            if self.in_use[band] <= 0:
                del self.in_use[band]

    def restores_json(self) -> bytes:
        """/.vaultfs/restores.json (`vaultfs.mount.status`)."""
        return restores_json(self.catalog)

    def status_text(self) -> bytes:
        """/.vaultfs/status (`vaultfs.mount.status`)."""
        return status_text(self.catalog, self.info, self.inode_count)

    def statfs(self) -> tuple[int, int]:
        """(files, bytes) of the newest version of every collection, for statvfs."""
        files = size = 0
        for coll in self.catalog.collections():
            latest = self.catalog.latest_version(coll)
            if latest is not None:
                files += latest.stats.files
                size += latest.stats.bytes
        return files, size


def start_threads(view: VaultView) -> None:
    """Start the view's prefetch threads and the hasher thread now (after any fork), so that
    the first read of a mount does not pay for starting them while it waits for its frame."""
    view.readers.read_ahead.start()
    view.readers.hasher.submit(int)


def _version_number(name: bytes) -> int | None:
    if len(name) < 2 or name[:1] != b"v" or not name[1:].isdigit() or name[1:2] == b"0":
        return None
    return int(name[1:])


def _by_inode(items: list[tuple[bytes, Node]], after: int) -> Iterator[tuple[bytes, Node, int]]:
    for name, node in sorted(items, key=lambda item: item[1].ino):
        if node.ino > after:
            yield name, node, node.ino
