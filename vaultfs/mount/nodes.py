"""What one inode of the mount is: `Node`, its `Attr`, and its stable number (no FUSE here).

Identity (what makes inode numbers stable across remounts):

* An inode number is 63 bits of BLAKE2b over the node's catalog identity:
  ``(collection, version, path)``; the second and later names of a hard-linked file
  use the path of the group's first name (`Entry.hardlink`), so they share one
  inode. On a collision with a different node that the kernel still references,
  the view (`VaultView`) uses the next free number (stable within a mount; with
  2**63 numbers a collision is not expected in practice).

Kept apart from the view (`vaultfs.mount.view`), which owns the node table (which
inodes the kernel references) and answers lookups and listings with these records:
this module is only the records and the hash, the words fuse_ops and the view share.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from vaultfs.model import Entry, TreeId

ROOT_INO = 1
MAX_INO = (1 << 63) - 1
# Entries and attributes inside a version never change: the kernel may keep them (and
# that a name is not there) for as long as the mount lives.
IMMUTABLE_TIMEOUT = 365 * 86400.0

NodeKind = Literal["root", "meta", "status", "restores", "collection", "latest", "version", "entry"]


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
    allocated: int = -1  # bytes a sparse file's data takes (its holes take none); -1: `size`

    @property
    def blocks(self) -> int:
        """st_blocks, in 512-byte units: what `du` adds up (a sparse file: its data only)."""
        return ((self.size if self.allocated < 0 else self.allocated) + 511) // 512


@dataclass(slots=True, eq=False)
class Node:
    """One inode. ``path`` is relative to the version root ('/'-separated, b"" for it).

    A node inside a version keeps its entry as the JSON object of its tree's encoding
    (``row``), made an `Entry` only when something asks for it (`entry`: reading, a
    symlink's target, its xattrs): a listing needs only a few fields of each, which
    `vaultfs.mount.attrs` reads from the row.
    """

    ino: int
    kind: NodeKind
    key: tuple[object, ...]
    collection: str = ""
    version: int = 0
    path: bytes = b""
    decoded: Entry | None = None  # `entry` once made (a version directory's: given)
    tree: TreeId | None = None
    refs: int = 0
    created_ns: int = 0  # version directories: snapshot time
    row: dict[str, Any] | None = None  # the entry in its tree's encoding (`tree_rows`)

    @property
    def entry(self) -> Entry | None:
        """The node's entry in its version (None above the versions)."""
        if self.decoded is None and self.row is not None:
            self.decoded = Entry.from_json(self.row)
        return self.decoded


def inode_number(*key: object) -> int:
    """The stable inode number of a catalog identity (never 0 or the root's 1)."""
    return hashed_ino(b"\0".join(k if isinstance(k, bytes) else str(k).encode() for k in key))


def hashed_ino(raw: bytes) -> int:
    """The inode number of an identity already encoded (`inode_number` joins and encodes)."""
    n = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") & MAX_INO
    return n if n > ROOT_INO else n + 2


@functools.lru_cache(maxsize=64)
def entry_prefix(collection: str, version: int) -> bytes:
    """``inode_number("entry", collection, version, path)`` hashes this + path."""
    return b"\0".join((b"entry", collection.encode(), str(version).encode(), b""))
