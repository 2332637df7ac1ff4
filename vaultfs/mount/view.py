"""What the versions of a vault look like as a read-only filesystem (no FUSE here).

Layout::

    /                         root (0555)
    /.vaultfs/status          human-readable: vault, collections, versions, bands by state,
                              restores in flight, the restore watcher
    /.vaultfs/restores.json   every band restoring, restored or cached (as `restore status --json`)
    /<collection>/            one directory per collection; mtime = its newest version
    /<collection>/v<N>/…      every version; the version directory has the source root's mode,
                              owner, mtime and xattrs (records from before vaultfs kept
                              them: 0555 root:root, mtime = snapshot time)
    /<collection>/latest      symlink → v<newest>

Everything except file content is answered from the local catalog (LMDB): each
call opens its own short read transaction, so a version committed while mounted
shows up at the next lookup or listing of its collection directory. File content
comes from the band's frames through `Vault.band_reader`.

Identity (what makes inode numbers and readdir offsets stable across remounts):

* An inode number is 63 bits of BLAKE2b over the node's catalog identity:
  ``(collection, version, path)``; the second and later names of a hard-linked file
  use the path of the group's first name (`Entry.hardlink`), so they share one
  inode. On a collision with a different node that the kernel still references,
  the next free number is used (stable within a mount; with 2**63 numbers a
  collision is not expected in practice).
* readdir offsets inside a version are positions in the immutable tree (+1);
  in the root and collection directories (which change while mounted) an
  entry's offset is its inode number, entries listed in inode order.

Lookup counts (the kernel's references) are kept per inode: `remember` after
each successful lookup/readdirplus entry, `forget` when the kernel drops them; a
node is dropped when its count reaches zero, so the node table holds only what
the kernel holds.

Memory bound: the node table (~0.3 KiB per inode the kernel references), the
decoded-tree cache (`TREE_CACHE_BYTES` of encoded trees, ~4x that decoded), and
at most `READERS` band readers, each with a frame cache of
max(`FRAME_CACHE_BYTES`, 2 x its largest frame) that also receives the frames
prefetched for sequential readers (2 prefetch threads, one frame each in flight).
A read inside one frame returns a view of the cached frame (no copy): that frame
stays alive until the kernel has taken the reply.

Band states (`vaultfs.archive`): opening a file whose band is not readable now
(archived, restoring) raises `Archived` naming the band; the caller decides
about a restore. The view counts open handles per band (`in_use`, so the band
cache never evicts a band being read) and when each band was last opened
(`last_used`); `BandReaders.invalidate` drops a band's reader when its state
changes (restored → cached: read the local copy from then on).

Concurrency: the listing methods are called from one thread (the trio loop).
`OpenFile.read` is blocking and thread-safe (called from worker threads);
the band reader LRU and the per-handle hash state have their own locks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

from vaultfs import archive, testpoints
from vaultfs import band as bandfmt
from vaultfs.errors import CorruptionError
from vaultfs.model import (
    BandId,
    BandInfo,
    BandState,
    BlobId,
    BlobRef,
    Entry,
    TreeId,
    VersionInfo,
    readable_now,
    to_text,
)
from vaultfs.output import display_path
from vaultfs.store.base import ObjectArchived
from vaultfs.vault import Vault, lost_message

log = logging.getLogger("vaultfs.mount")

ROOT_INO = 1
BLKSIZE = 1024 * 1024  # st_blksize: cat/cp then read 1 MiB at a time (docs/mount.md)
TREE_CACHE_BYTES = 16 * 1024 * 1024
FRAME_CACHE_BYTES = 16 * 1024 * 1024
READ_AHEAD_FRAMES = 2  # a sequential reader has this many frames decompressed ahead
HASH_BACKLOG = 8 * 1024 * 1024  # served bytes of one open file waiting for the hasher
READERS = 4
IMMUTABLE_TIMEOUT = 3600.0  # attributes inside a version never change
LIVE_TIMEOUT = 1.0  # root, collection directories, `latest`: change when a version commits
META_DIR = b".vaultfs"
STATUS = b"status"
RESTORES = b"restores.json"
LATEST = b"latest"
_MASK63 = (1 << 63) - 1
_EMPTY_SHA256 = hashlib.sha256().digest()

NodeKind = Literal["root", "meta", "status", "restores", "collection", "latest", "version",
                   "entry"]
_KIND_BITS = {
    "file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK,
}


# ---- errors (fuse_ops maps each to one errno) ----------------------------------------------


class VfsError(Exception):
    """A request the filesystem refuses; fuse_ops turns each subclass into one errno."""


class NotFound(VfsError):
    """No such name, or an inode the kernel no longer references (ENOENT)."""


class NotADirectory(VfsError):
    """A directory operation on something else (ENOTDIR)."""


class NotASymlink(VfsError):
    """readlink of something that is not a symlink (EINVAL)."""


class NoAttribute(VfsError):
    """No such extended attribute (ENODATA)."""


class Unsupported(VfsError):
    """An extended attribute outside ``user.*``: none is ever kept (EOPNOTSUPP).

    Only ``user.*`` names are backed up (`vaultfs.source`), so the mount, like a
    filesystem without security labels or ACLs, answers EOPNOTSUPP for the others.
    ``ls -l`` asks every file for ``security.selinux``; after one EOPNOTSUPP it stops
    asking for the whole mount (ENODATA would be asked again for every file).
    """


class Archived(VfsError):
    """The content lies in a band that is not readable now (ENODATA, docs/mount.md)."""

    def __init__(self, band: BandId, state: str) -> None:
        super().__init__(f"band {band} is {state}")
        self.band = band
        self.state = state


class ReadOnly(VfsError):
    """Any change to the filesystem (EROFS)."""


# ---- records ---------------------------------------------------------------------------------


class Attr(NamedTuple):
    """What stat(2) shows for a node, and how long the kernel may cache it.

    (A named tuple: one is made for every entry a listing returns, and a tuple is
    several times cheaper to make than a frozen dataclass.)
    """

    ino: int
    mode: int  # st_mode, file type included
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int = 0
    timeout: float = IMMUTABLE_TIMEOUT

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512


@dataclass(slots=True, eq=False)
class Node:
    """One inode. ``path`` is relative to the version root ('/'-separated, b"" for it)."""

    ino: int
    kind: NodeKind
    key: tuple[object, ...]
    collection: str = ""
    version: int = 0
    path: bytes = b""
    entry: Entry | None = None
    tree: TreeId | None = None
    refs: int = 0
    created_ns: int = 0  # version directories: snapshot time


@dataclass(slots=True)
class _Listing:
    entries: tuple[Entry, ...]
    index: dict[bytes, int]
    subdirs: int
    cost: int


@dataclass
class MountInfo:
    """Facts for /.vaultfs/status that the caller knows (the VFS cannot see them)."""

    store: str = ""
    pid: int = field(default_factory=os.getpid)
    started_ns: int = field(default_factory=time.time_ns)
    # More lines for /.vaultfs/status (the restore watcher and budget, from vaultfs.mount).
    status_lines: Callable[[], list[str]] = field(default=lambda: [])


def inode_number(*key: object) -> int:
    """The stable inode number of a catalog identity (never 0 or the root's 1)."""
    return _hashed_ino(b"\0".join(k if isinstance(k, bytes) else str(k).encode() for k in key))


def _hashed_ino(raw: bytes) -> int:
    n = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") & _MASK63
    return n if n > ROOT_INO else n + 2


@functools.lru_cache(maxsize=64)
def _entry_prefix(collection: str, version: int) -> bytes:
    """``inode_number("entry", collection, version, path)`` hashes this + path."""
    return b"\0".join((b"entry", collection.encode(), str(version).encode(), b""))


# ---- the view -------------------------------------------------------------------------------


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
        known.refs += 1

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.refs -= count
        if node.refs <= 0:
            del self._nodes[ino]

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
            ino = ino + 1 if ino < _MASK63 else 2  # collision: next free number

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
        if parent.tree is None:
            raise NotADirectory(parent.path)
        listing = self._listing(parent.tree)
        pos = listing.index.get(name)
        if pos is None:
            raise NotFound(name)
        return self._child(parent, listing.entries[pos])

    def _lookup_in_root(self, name: bytes) -> Node:
        """``.vaultfs`` or a collection that has at least one version."""
        if name == META_DIR:
            return self._meta_dir()
        coll = name.decode("utf-8", "surrogateescape")
        if not self.catalog.latest_version(coll):
            raise NotFound(name)
        return self._collection(coll)

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

    def _version(self, v: VersionInfo) -> Node:
        """A version directory: with the source root's mode, owner, mtime and xattrs when the
        record has them (so the kernel's default_permissions guard what the source guarded)."""
        root = v.root_meta.entry(v.root) if v.root_meta is not None else None
        return self._make("version", ("version", v.collection, v.number), collection=v.collection,
                          version=v.number, tree=v.root, created_ns=v.created_ns, entry=root)

    def _child(self, parent: Node, e: Entry) -> Node:
        """The node of entry `e` of directory `parent` (called for every entry listed)."""
        path = e.name if not parent.path else parent.path + b"/" + e.name
        identity = e.hardlink if e.kind == "file" and e.hardlink is not None else path
        key = ("entry", parent.collection, parent.version, identity)
        # inode_number(*key), without re-encoding the collection and version for each entry
        ino = _hashed_ino(_entry_prefix(parent.collection, parent.version) + identity)
        known = self._nodes.get(ino)
        if known is None:
            return Node(ino, "entry", key, parent.collection, parent.version, path, e,
                        e.tree if e.kind == "dir" else None)
        if known.key == key:
            return known
        return self._make("entry", key, collection=parent.collection, version=parent.version,
                          path=path, entry=e, tree=e.tree if e.kind == "dir" else None)

    # ---- listing --------------------------------------------------------------------------

    def children(self, ino: int, after: int = 0) -> Iterator[tuple[bytes, Node, int]]:
        """(name, node, offset) of a directory's entries with offset > `after`, in offset order.

        Offsets are stable keys (see the module docstring), so a listing resumed
        at an offset neither repeats nor skips entries. "." and ".." are the kernel's.
        """
        node = self.node(ino)
        if node.kind == "root":
            items = [(META_DIR, self._meta_dir())]
            items += [(c.encode("utf-8", "surrogateescape"), self._collection(c))
                      for c in self.catalog.collections()]
            yield from _by_inode(items, after)
        elif node.kind == "meta":
            yield from _by_inode([(STATUS, self._make("status", ("status",))),
                                  (RESTORES, self._make("restores", ("restores",)))], after)
        elif node.kind == "collection":
            versions = self.catalog.versions(node.collection)
            items = [(f"v{v.number}".encode(), self._version(v)) for v in versions]
            if versions:
                items.append((LATEST, self._make("latest", ("latest", node.collection),
                                                 collection=node.collection)))
            yield from _by_inode(items, after)
        elif node.tree is not None:
            entries = self._listing(node.tree).entries
            for pos in range(max(after, 0), len(entries)):
                yield entries[pos].name, self._child(node, entries[pos]), pos + 1
        else:
            raise NotADirectory(node.path)

    def _listing(self, tree: TreeId) -> _Listing:
        """A decoded tree from a bounded LRU (trees are shared between versions)."""
        listing = self._trees.get(tree)
        if listing is not None:
            self._trees.move_to_end(tree)
            return listing
        raw = self.catalog.tree_bytes(tree)
        if raw is None:
            raise CorruptionError(f"tree {tree.hex()[:16]} is missing from the local catalog: "
                                  "run `vaultfs index rebuild`")
        from vaultfs.model import decode_tree

        entries = decode_tree(raw)
        listing = _Listing(entries, {e.name: i for i, e in enumerate(entries)},
                           sum(1 for e in entries if e.kind == "dir"), len(raw))
        self._trees[tree] = listing
        self._tree_bytes += listing.cost
        while self._tree_bytes > TREE_CACHE_BYTES and len(self._trees) > 1:
            _, old = self._trees.popitem(last=False)
            self._tree_bytes -= old.cost
        return listing

    # ---- attributes -----------------------------------------------------------------------

    def attr(self, node: Node) -> Attr:
        """stat(2) of a node, from the catalog only."""
        e = node.entry
        if e is not None:  # inside a version (most nodes): checked first
            if e.kind == "dir":
                assert e.tree is not None
                nlink = 2 + self._listing(e.tree).subdirs
            else:
                nlink = max(1, e.nlink) if e.kind == "file" else 1
            size = e.size if e.kind in ("file", "symlink") else 0
            return Attr(node.ino, _KIND_BITS[e.kind] | (e.mode & 0o7777), nlink, e.uid, e.gid,
                        size, e.mtime_ns, e.rdev)
        if node.kind == "root":
            colls = self.catalog.collections()
            return Attr(node.ino, stat.S_IFDIR | 0o555, 3 + len(colls), 0, 0, 0,
                        self.info.started_ns, timeout=LIVE_TIMEOUT)
        if node.kind == "meta":
            return Attr(node.ino, stat.S_IFDIR | 0o555, 2, 0, 0, 0, self.info.started_ns,
                        timeout=LIVE_TIMEOUT)
        if node.kind == "status":
            return Attr(node.ino, stat.S_IFREG | 0o444, 1, 0, 0, len(self.status_text()),
                        time.time_ns(), timeout=0.0)
        if node.kind == "restores":
            return Attr(node.ino, stat.S_IFREG | 0o444, 1, 0, 0, len(self.restores_json()),
                        time.time_ns(), timeout=0.0)
        if node.kind == "collection":
            versions = self.catalog.versions(node.collection)
            mtime = versions[-1].created_ns if versions else 0
            return Attr(node.ino, stat.S_IFDIR | 0o555, 2 + len(versions), 0, 0, 0, mtime,
                        timeout=LIVE_TIMEOUT)
        if node.kind == "latest":
            latest = self.catalog.latest_version(node.collection)
            if latest is None:
                raise NotFound(node.collection)
            return Attr(node.ino, stat.S_IFLNK | 0o777, 1, 0, 0, len(f"v{latest.number}"),
                        latest.created_ns, timeout=LIVE_TIMEOUT)
        if node.kind == "version":
            assert node.tree is not None
            return Attr(node.ino, stat.S_IFDIR | 0o555, 2 + self._listing(node.tree).subdirs,
                        0, 0, 0, node.created_ns)
        raise NotFound(node.path)  # every kind is answered above

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

    # ---- extended attributes -----------------------------------------------------------------

    def xattr_names(self, ino: int) -> list[bytes]:
        node = self.node(ino)
        if node.entry is None:
            return []
        names = [k for k, _ in node.entry.xattrs]
        if node.entry.kind == "file":
            names += [b"user.vaultfs.state", b"user.vaultfs.sha256"]
            if self._blob_ref(node.entry) is not None:
                names.append(b"user.vaultfs.band")
        return names

    def xattr(self, ino: int, name: bytes) -> bytes:
        node = self.node(ino)
        if not name.startswith(b"user."):
            raise Unsupported(name)
        e = node.entry
        if e is None:
            raise NoAttribute(name)
        for key, value in e.xattrs:
            if key == name:
                return value
        # Only our own names reach the catalog: ls -l asks every file for ACLs and labels.
        if e.kind == "file" and name.startswith(b"user.vaultfs."):
            if name == b"user.vaultfs.sha256":
                return (e.blob or BlobId(_EMPTY_SHA256)).hex().encode()
            ref = self._blob_ref(e)
            if name == b"user.vaultfs.state":
                return b"available" if ref is None else self.band_state(ref.band).encode()
            if name == b"user.vaultfs.band" and ref is not None:
                return ref.band.encode()
        raise NoAttribute(name)

    def band_info(self, band: BandId) -> BandInfo:
        info = self.catalog.band(band)
        if info is None:
            raise CorruptionError(f"band {band} is not in the local catalog: run `vaultfs check`")
        return info

    def band_state(self, band: BandId) -> str:
        """``user.vaultfs.state`` of a file in `band` (see `state_text`)."""
        return state_text(self.band_info(band))

    def _blob_ref(self, e: Entry) -> BlobRef | None:
        """Where a file's content lies; None for empty content (no band needed)."""
        if e.blob is None or (e.size == 0 and e.blob == _EMPTY_SHA256):
            return None
        ref = self.catalog.blob(e.blob)
        if ref is None:
            raise CorruptionError(f"blob {e.blob.hex()[:16]} is not in the local catalog: "
                                  "run `vaultfs check`")
        return ref

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
            ref = self._blob_ref(e)
        except CorruptionError:
            lost = self.catalog.lost_blob(e.blob) if e.blob is not None else None
            if lost is None:
                raise
            # EIO, and one log line (fuse_ops) naming the file, its version and why.
            raise CorruptionError(f"{node.collection}@v{node.version}/"
                                  f"{display_path(node.path)}: {lost_message(lost)}") from None
        if ref is not None:
            info = self.band_info(ref.band)
            if info.state == "cached" and not self.vault.band_cached(ref.band):
                info = self._cache_copy_lost(info)
            if not readable_now(info):
                raise Archived(ref.band, info.state)
            self.in_use[ref.band] += 1
            self.last_used[ref.band] = time.time_ns()
        fault = testpoints.fails("read:" + to_text(e.name))  # tests only (vaultfs/testpoints.py)
        return OpenFile(self.readers, ref, e.blob or BlobId(_EMPTY_SHA256), e.size, fault)

    def _cache_copy_lost(self, info: BandInfo) -> BandInfo:
        """The catalog says `cached` but the local copy is gone (deleted to free space, a
        wiped cache directory): record what the band is without it, so the file reads
        from S3 if it can, or answers ENODATA and is restored again — not EIO, which
        would say the backup is damaged."""
        return self.readers.demote(info, archive.state_without_cache(info),
                                   f"its cached copy in {self.vault.cache_dir} is gone")

    def release(self, handle: OpenFile | StatusFile) -> None:
        """A handle from `open` was closed."""
        if isinstance(handle, OpenFile) and handle.ref is not None:
            band = handle.ref.band
            self.in_use[band] -= 1
            if self.in_use[band] <= 0:
                del self.in_use[band]

    def in_flight(self) -> list[BandInfo]:
        """Bands restoring, restored or cached (the catalog's view; the watcher refreshes it)."""
        return [b for b in self.catalog.bands() if b.state in ("restoring", "restored", "cached")]

    def restores_json(self) -> bytes:
        """/.vaultfs/restores.json: like ``vaultfs restore status --json`` (without a HEAD)."""
        bands = self.in_flight()
        doc = {
            "bands": [archive.band_status_json(b) for b in bands],
            "bytes_pending": sum(b.size for b in bands if b.state == "restoring"),
            "bytes_ready": sum(b.size for b in bands if b.state != "restoring"),
        }
        return (json.dumps(doc, indent=1) + "\n").encode()

    def status_text(self) -> bytes:
        """/.vaultfs/status: the vault, its collections and versions, bands by state."""
        lines = [f"vaultfs mount of {self.info.store}",
                 f"pid {self.info.pid}, mounted since {_iso(self.info.started_ns)}", "",
                 "collections:"]
        for coll in self.catalog.collections():
            versions = self.catalog.versions(coll)
            last = versions[-1]
            lines.append(f"  {coll}: {len(versions)} version(s), latest v{last.number} "
                         f"at {_iso(last.created_ns)}, {last.stats.files} files, "
                         f"{last.stats.bytes} bytes")
        states: dict[str, list[int]] = {}
        flight: list[BandInfo] = []
        for info in self.catalog.bands():
            acc = states.setdefault(info.state, [0, 0])
            acc[0] += 1
            acc[1] += info.size
            if info.state in ("restoring", "restored"):
                flight.append(info)
        lines += ["", "bands by state:"]
        lines += [f"  {s}: {n} band(s), {size} bytes" for s, (n, size) in sorted(states.items())]
        lines.append(f"  inodes in use: {self.inode_count}")
        lines += ["", f"restores in flight: {len(flight)} band(s), "
                      f"{sum(b.size for b in flight)} bytes (/.vaultfs/restores.json)"]
        lines += [f"  {b.band}: {state_text(b)}" for b in flight]
        lines += self.info.status_lines()
        return ("\n".join(lines) + "\n").encode()

    def statfs(self) -> tuple[int, int]:
        """(files, bytes) of the newest version of every collection, for statvfs."""
        files = size = 0
        for coll in self.catalog.collections():
            latest = self.catalog.latest_version(coll)
            if latest is not None:
                files += latest.stats.files
                size += latest.stats.bytes
        return files, size


class OpenFile:
    """An open file: ranged reads of its blob. Thread-safe; `read` blocks (run it in a thread),
    `peek` does not (an event loop may call it).

    Every byte returned has passed its zstd frame's checksum. While a file is read
    sequentially from offset 0, its SHA-256 is also computed over exactly the bytes
    returned, and the read that reaches the end fails with CorruptionError unless it
    matches the blob id. Three things overlap for a sequential reader: the band's next
    frame is decompressed in the background (`BandReaders.read` with ``until``), the
    bytes already returned are hashed by the hasher thread (in order: it is one thread),
    and the current frame is served, straight from the event loop when it is cached.
    At most HASH_BACKLOG bytes wait for the hasher (they pin their frames in memory).
    """

    def __init__(self, readers: BandReaders, ref: BlobRef | None, blob: BlobId, size: int,
                 fault: bool = False) -> None:
        self.readers, self.ref, self.blob, self.size = readers, ref, blob, size
        self._fault = fault
        self._lock = threading.Lock()
        self._hash: hashlib._Hash | None = hashlib.sha256()
        self._hashed = 0  # bytes handed to the hasher (from offset 0, in order)
        self._backlog: deque[tuple[Future[None], int]] = deque()  # hasher jobs not done
        self._backlog_bytes = 0

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.read_view(offset, length))

    def read_view(self, offset: int, length: int) -> bytes | memoryview:
        """Like `read`; a range inside one frame comes back as a view of the frame (no copy)."""
        if self._fault:
            raise testpoints.InjectedFault("injected fault at read (VAULTFS_TESTPOINTS)")
        length = max(0, min(length, self.size - offset))
        if length == 0 or self.ref is None:
            return b""
        sequential = self._hash is not None and offset == self._hashed
        until = self.ref.offset + self.size if sequential else 0
        data = self.readers.read(self.ref.band, self.ref.offset + offset, length, until)
        if len(data) != length:
            raise CorruptionError(f"band {self.ref.band}: short read of blob {self.blob.hex()}")
        self._verify(offset, data)
        return data

    def peek(self, offset: int, length: int) -> memoryview | None:
        """`read_view` when it needs no waiting: the bytes are in a cached frame, this read
        does not end the file (that one waits for the hash) and the hasher is not too far
        behind. Else None: call `read_view` in a thread."""
        if self._fault or self.ref is None:
            return None
        length = min(length, self.size - offset)
        if length <= 0 or offset + length == self.size:
            return None
        with self._lock:
            if self._hash is not None and (
                    offset != self._hashed or self._backlog_bytes >= HASH_BACKLOG):
                return None  # not sequential (read_view decides), or let the hasher catch up
        data = self.readers.peek(self.ref.band, self.ref.offset + offset, length,
                                 self.ref.offset + self.size)
        if data is not None:
            self._verify(offset, data, wait=False)
        return data

    def _verify(self, offset: int, data: bytes | memoryview, *, wait: bool = True) -> None:
        with self._lock:
            if self._hash is None or offset != self._hashed:
                self._hash = None  # not sequential: the frame checksums alone vouch for it
                self._backlog.clear()
                return
            job = self.readers.hasher.submit(self._hash.update, data)
            self._backlog.append((job, len(data)))
            self._backlog_bytes += len(data)
            self._hashed += len(data)
            done = self._hashed == self.size
            while self._backlog and (self._backlog[0][0].done() or (wait and (
                    done or self._backlog_bytes > HASH_BACKLOG))):
                oldest, n = self._backlog.popleft()
                oldest.result()  # waits only when the file ends or the backlog is full
                self._backlog_bytes -= n
            if done and self._hash.digest() != self.blob:
                assert self.ref is not None
                raise CorruptionError(f"band {self.ref.band}: blob {self.blob.hex()} at "
                                      f"{self.ref.offset} fails SHA-256")


def start_threads(view: VaultView) -> None:
    """Start the view's prefetch threads and the hasher thread now (after any fork), so that
    the first read of a mount does not pay for starting them while it waits for its frame."""
    view.readers.read_ahead.start()
    view.readers.hasher.submit(int)


class StatusFile:
    """An open /.vaultfs/status: the text rendered at open."""

    def __init__(self, text: bytes) -> None:
        self.text = text

    def read(self, offset: int, length: int) -> bytes:
        return self.text[offset:offset + length]

    read_view = read


class BandReaders:
    """A bounded LRU of labelled band readers; reads split at frame boundaries.

    Splitting means a read decompresses (or finds in the reader's frame cache)
    whole frames but copies only the bytes asked for, so 1 MiB reads of a band
    with 8 MiB frames cost one decompression per frame, not one per read.
    """

    def __init__(self, vault: Vault, limit: int = READERS) -> None:
        self.vault = vault
        self.limit = limit
        self._lock = threading.Lock()
        self._readers: OrderedDict[BandId, bandfmt.BandReader] = OrderedDict()
        # Decompresses frames ahead of sequential readers (every reader's `prefetch`);
        # its threads are ours: `close` stops them.
        self.read_ahead = bandfmt.ReadAhead()
        # The one thread that hashes what sequential readers were served, in order
        # (`OpenFile`); ours too.
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaultfs-hash")

    def close(self) -> None:
        """Stop the read-ahead and hasher threads (after finishing what they were given)."""
        self.read_ahead.close()
        self.hasher.shutdown(wait=True)

    def invalidate(self, band: BandId) -> None:
        """Forget the band's reader: its state changed (cached: read the local copy now)."""
        with self._lock:
            self._readers.pop(band, None)

    def get(self, band: BandId) -> bandfmt.BandReader:
        with self._lock:
            reader = self._readers.get(band)
            if reader is not None:
                self._readers.move_to_end(band)
                return reader
        reader = self.vault.band_reader(band, cache_bytes=FRAME_CACHE_BYTES)
        with self._lock:
            reader = self._readers.setdefault(band, reader)
            while len(self._readers) > self.limit:
                self._readers.popitem(last=False)
        return reader

    def peek(self, band: BandId, offset: int, length: int, until: int) -> memoryview | None:
        """`read` of a range in one frame that is decompressed already, else None; never
        blocks. Starts decompressing the next frame, like `read` with ``until``."""
        with self._lock:
            reader = self._readers.get(band)
        if reader is None:
            return None
        data = reader.peek_view(offset, length)
        if data is not None:
            _read_ahead(reader, self.read_ahead, offset, until)
        return data

    def read(self, band: BandId, offset: int, length: int, until: int = 0) -> bytes | memoryview:
        """Bytes [offset, offset+length) of the band's tar stream, frame-checksum verified.

        A sequential reader passes `until`, the end of what it will read: the
        READ_AHEAD_FRAMES frames after the last one this read touches are then
        decompressed in the background (`BandReader.prefetch`) if they begin before `until`.
        Archived (ENODATA) if S3 says the band is archived after all (a restore that
        expired unnoticed): the catalog then says so too, and the next open restores it.
        """
        try:
            return self._read(band, offset, length, until)
        except ObjectArchived:
            info = self.vault.catalog.band(band)
            if info is not None and info.state != "archived":
                self.demote(info, "archived", "S3 says it is archived (its restore expired); "
                            "opening a file of it restores it again")
            else:
                self.invalidate(band)
            raise Archived(band, "archived") from None

    def demote(self, info: BandInfo, state: BandState, why: str) -> BandInfo:
        """The band is less available than the catalog said: record `state` (not cached),
        forget its reader, say why in the log."""
        new = replace(info, state=state, cached=False)
        with self.vault.catalog.writer() as w:
            w.put_band(new)
        self.invalidate(info.band)
        log.warning("band %s: %s; it is %s now", info.band, why, state)
        return new

    def _read(self, band: BandId, offset: int, length: int, until: int) -> bytes | memoryview:
        reader = self.get(band)
        frames = reader.frames
        i = reader.frame_index(offset)
        if until:  # this read's frames first, then the next: the pool decompresses both
            _read_ahead(reader, self.read_ahead, offset, until, first=i)
        pieces: list[bytes | memoryview] = []
        pos, end = offset, offset + length
        while pos < end and i < len(frames):
            f = frames[i]
            stop = min(end, f.uncompressed_offset + f.uncompressed_size)
            if stop > pos:
                pieces.append(reader.read_view(pos, stop - pos))
                pos = stop
            i += 1
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _read_ahead(reader: bandfmt.BandReader, read_ahead: bandfmt.ReadAhead, offset: int,
                until: int, first: int | None = None) -> None:
    """Prefetch READ_AHEAD_FRAMES frames after the one holding byte `offset` (and from
    frame `first` on, if given) that begin before `until`."""
    frames = reader.frames
    after = reader.frame_index(offset) + 1
    for i in range(after if first is None else first,
                   min(after + READ_AHEAD_FRAMES, len(frames))):
        if frames[i].uncompressed_offset >= until:
            break
        reader.prefetch(i, read_ahead)


def state_text(info: BandInfo) -> str:
    """``available`` (standard), ``archived``, ``restoring (Bulk, ready by …)``,
    ``restored until …`` or ``cached``."""
    r = info.restore
    if info.state == "restoring":
        if r is None:
            return "restoring"
        return f"restoring ({r.tier}, ready by {_minute(r.expected_ns)})"
    if info.state == "restored":
        return f"restored until {_minute(r.expires_ns)}" if r and r.expires_ns else "restored"
    if info.state in ("archived", "cached"):
        return info.state
    return "available"


def _minute(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(ns / 1e9))


def _version_number(name: bytes) -> int | None:
    if len(name) < 2 or name[:1] != b"v" or not name[1:].isdigit() or name[1:2] == b"0":
        return None
    return int(name[1:])


def _by_inode(items: list[tuple[bytes, Node]], after: int) -> Iterator[tuple[bytes, Node, int]]:
    for name, node in sorted(items, key=lambda item: item[1].ino):
        if node.ino > after:
            yield name, node, node.ino


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))
