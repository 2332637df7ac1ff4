"""stat(2) and the extended attributes of the view's nodes, from the catalog only (no FUSE here).

Plain functions over a `VaultView` (`vaultfs.mount.view`), whose methods `attr`,
`xattr_names` and `xattr` call them directly: the view owns the node table and the
decoded-tree cache (a directory's link count is 2 + its subdirectories), this module
what a node's attributes are. Inside a version they are the entry's own (mode, owner,
times, size, device, xattrs); a version directory has the source root's (records from
before vaultfs kept them: 0555 root:root, mtime = snapshot time); the root, /.vaultfs/,
the collection directories and `latest` change while mounted (`LIVE_TIMEOUT`).

Nodes answer the xattrs their source had, of every namespace (POSIX ACLs among them).
Files also answer ``user.vaultfs.state`` (their band's state in words,
`vaultfs.mount.status.state_text`), ``user.vaultfs.sha256`` and, unless empty,
``user.vaultfs.band``; and, when their band is in Deep Archive or came back from it,
``user.xdg.comment`` and ``user.xdg.tags`` (`vaultfs.mount.xdg`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import stat
import time
from typing import TYPE_CHECKING, Any

from vaultfs.errors import CorruptionError
from vaultfs.model import KIND_BITS, BandId, BandInfo, BlobId, BlobRef, Entry
from vaultfs.mount import xdg
from vaultfs.mount.errors import NoAttribute, NotFound, Unsupported
from vaultfs.mount.nodes import IMMUTABLE_TIMEOUT, Attr, Node
from vaultfs.mount.status import state_text
from vaultfs.sparse import data_size

if TYPE_CHECKING:
    from vaultfs.catalog import Catalog
    from vaultfs.config import Config
    from vaultfs.mount.view import VaultView

# root, collection directories, `latest`: change when a version commits; a version
# directory's entry: `vaultfs forget` may remove it while mounted
LIVE_TIMEOUT = 1.0
EMPTY_SHA256 = hashlib.sha256().digest()
# `Entry`'s defaults, which its encoding leaves out (read from the rows of trees)
_MODE, _NLINK = (next(f.default for f in dataclasses.fields(Entry) if f.name == n) for n in ("mode", "nlink"))


def node_attr(view: VaultView, node: Node) -> Attr:
    """stat(2) of a node, from the catalog only."""
    row = node.row
    if row is None and node.decoded is not None:  # a version directory: its source root's
        row = node.decoded.to_json()
    if row is not None:  # inside a version (most nodes): checked first
        return _entry_attr(view, node, row)
    if node.kind == "version":
        assert node.tree is not None
        return Attr(
            node.ino,
            stat.S_IFDIR | 0o555,
            2 + view.listing(node.tree).subdirs,
            0,
            0,
            0,
            node.created_ns,
            timeout=LIVE_TIMEOUT,
        )
    return _live_attr(view, node)


def _entry_attr(view: VaultView, node: Node, row: dict[str, Any]) -> Attr:
    """stat(2) of an entry, straight from its tree's encoding (`Node.row`; the defaults of
    `Entry` for the fields left out): a listing makes one for every entry, and making
    each `Entry` first would cost more than the rest of the listing."""
    kind = row["kind"]
    get = row.get
    if kind == "dir":
        assert node.tree is not None
        nlink = 2 + view.listing(node.tree).subdirs
    else:
        nlink = max(1, get("nlink", _NLINK)) if kind == "file" else 1
    sparse = get("sparse")
    return Attr(
        node.ino,
        KIND_BITS[kind] | (get("mode", _MODE) & 0o7777),
        nlink,
        get("uid", 0),
        get("gid", 0),
        get("size", 0) if kind in ("file", "symlink") else 0,
        get("mtime_ns", 0),
        get("rdev", 0),
        # a version directory's own entry: `vaultfs forget` may remove it while mounted
        LIVE_TIMEOUT if node.kind == "version" else IMMUTABLE_TIMEOUT,
        -1 if sparse is None else data_size(sparse),  # a sparse file's data only
    )


def _live_attr(view: VaultView, node: Node) -> Attr:
    """stat(2) of the root, /.vaultfs/ and its files, a collection directory or `latest`."""
    if node.kind == "root":
        colls = view.collections()
        return Attr(
            node.ino,
            stat.S_IFDIR | 0o555,
            3 + len(colls),
            0,
            0,
            0,
            view.info.started_ns,
            timeout=LIVE_TIMEOUT,
        )
    if node.kind == "meta":
        return Attr(node.ino, stat.S_IFDIR | 0o555, 2, 0, 0, 0, view.info.started_ns, timeout=LIVE_TIMEOUT)
    if node.kind == "status":
        return Attr(
            node.ino, stat.S_IFREG | 0o444, 1, 0, 0, len(view.status_text()), time.time_ns(), timeout=0.0
        )
    if node.kind == "restores":
        return Attr(
            node.ino,
            stat.S_IFREG | 0o444,
            1,
            0,
            0,
            len(view.restores_json()),
            time.time_ns(),
            timeout=0.0,
        )
    if node.kind == "collection":
        versions = view.catalog.versions(node.collection)
        mtime = versions[-1].created_ns if versions else view.info.started_ns
        return Attr(node.ino, stat.S_IFDIR | 0o555, 2 + len(versions), 0, 0, 0, mtime, timeout=LIVE_TIMEOUT)
    if node.kind == "latest":
        latest = view.catalog.latest_version(node.collection)
        if latest is None:
            raise NotFound(node.collection)
        return Attr(
            node.ino,
            stat.S_IFLNK | 0o777,
            1,
            0,
            0,
            len(f"v{latest.number}"),
            latest.created_ns,
            timeout=LIVE_TIMEOUT,
        )
    raise NotFound(node.path)  # every kind is answered above


# ---- extended attributes ---------------------------------------------------------------------


def xattr_names(catalog: Catalog, node: Node) -> list[bytes]:
    if node.entry is None:
        return []
    names = [k for k, _ in node.entry.xattrs]
    if node.entry.kind == "file":
        names += [b"user.vaultfs.state", b"user.vaultfs.sha256"]
        ref = blob_ref(catalog, node.entry)
        if ref is not None:
            names.append(b"user.vaultfs.band")
            names += [n for n in xdg.names(band_info(catalog, ref.band)) if n not in names]
    return names


def xattr(catalog: Catalog, node: Node, name: bytes, config: Config | None = None) -> bytes:
    """An xattr as snapshotted (any namespace; POSIX ACLs in the kernel's binary form, which
    the kernel reads and caches for getfacl and its permission checks), or one of ours.

    A ``security.*`` name the node lacks answers EOPNOTSUPP, not ENODATA: ``ls -l`` asks
    every file for ``security.selinux``, and after one EOPNOTSUPP it stops asking for the
    whole mount (see `Unsupported`). Missing ACLs must be ENODATA ("no ACL"): the kernel
    would refuse access to the node on any other error.
    """
    ours = name.startswith(b"user.vaultfs.") or name in xdg.NAMES
    if not ours and node.row is not None and "xattrs" not in node.row:
        # `ls -l` asks every entry for its ACLs: answered without making its `Entry`
        raise Unsupported(name) if name.startswith(b"security.") else NoAttribute(name)
    e = node.entry
    for key, value in e.xattrs if e is not None else ():
        if key == name:
            return value
    if e is None or not (e.kind == "file" and ours):
        raise Unsupported(name) if name.startswith(b"security.") else NoAttribute(name)
    # Only our own names reach the catalog: ls -l asks every file for ACLs and labels.
    if name in xdg.NAMES:
        return xdg_xattr(catalog, e, name, config)
    if name == b"user.vaultfs.sha256":
        return (e.blob or BlobId(EMPTY_SHA256)).hex().encode()
    ref = blob_ref(catalog, e)
    if name == b"user.vaultfs.state":
        return b"available" if ref is None else state_text(band_info(catalog, ref.band)).encode()
    if name == b"user.vaultfs.band" and ref is not None:
        return ref.band.encode()
    raise NoAttribute(name)


def xdg_xattr(catalog: Catalog, e: Entry, name: bytes, config: Config | None) -> bytes:
    """``user.xdg.comment``/``tags``: the band's state for file managers (`vaultfs.mount.xdg`)."""
    ref = blob_ref(catalog, e)
    found = None
    if ref is not None and config is not None:
        found = xdg.value(band_info(catalog, ref.band), name, config)
    if found is None:
        raise NoAttribute(name)
    return found


def band_info(catalog: Catalog, band: BandId) -> BandInfo:
    info = catalog.band(band)
    if info is None:
        raise CorruptionError(f"band {band} is not in the local catalog: run `vaultfs check`")
    return info


def blob_ref(catalog: Catalog, e: Entry) -> BlobRef | None:
    """Where a file's content lies; None for empty content (no band needed)."""
    if e.blob is None or (e.blob_size == 0 and e.blob == EMPTY_SHA256):
        return None
    ref = catalog.blob(e.blob)
    if ref is None:
        raise CorruptionError(f"blob {e.blob.hex()[:16]} is not in the local catalog: run `vaultfs check`")
    return ref
