"""Inode flags (``chattr`` / ``lsattr``): which a snapshot keeps, reading and setting them.

Linux gives every inode of ext2/3/4, XFS, btrfs, f2fs and (since 6.0) tmpfs a word of
flags, read and written with the ``FS_IOC_GETFLAGS`` / ``FS_IOC_SETFLAGS`` ioctls on an
open file or directory (never on symlinks or devices: opening those is not neutral).
Three groups (decided here, documented in docs/snapshots.md):

* **kept** (`KEPT`): what a user sets with chattr and means to get back — ``s u c S i a
  d A m j t D T C``. A restore sets them; ``i`` (immutable) and ``a`` (append only) are
  `SEALING`: set last, after the content, xattrs, owner, mode, times and hard links
  (an immutable file can be neither written, renamed, linked nor given times).
* **the filesystem's own bookkeeping** (`LAYOUT`): ``e`` (extents), ``I`` (hashed
  directory), ``h`` (huge file), ``N`` (inline data) and the EOF-blocks bit describe how
  ext4 stores an inode; it sets them itself. Never kept, never reported.
* **everything else** — ``E`` (encrypted: needs the key's policy), ``V`` (verity: needs
  its Merkle tree), ``x`` (DAX), ``P`` (project inherit: the project id is not kept),
  ``F`` (casefold: only on empty directories of filesystems made for it), unknown bits:
  not kept, and a snapshot reports each by letter and count (`not_kept`).
"""

from __future__ import annotations

import errno
import fcntl
import struct

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602

# chattr's letter for each bit, in lsattr's order.
LETTERS: tuple[tuple[int, str], ...] = (
    (0x00000001, "s"),
    (0x00000002, "u"),
    (0x00000008, "S"),
    (0x00010000, "D"),
    (0x00000010, "i"),
    (0x00000020, "a"),
    (0x00000040, "d"),
    (0x00000080, "A"),
    (0x00000004, "c"),
    (0x00000800, "E"),
    (0x00004000, "j"),
    (0x00001000, "I"),
    (0x00008000, "t"),
    (0x00020000, "T"),
    (0x00080000, "e"),
    (0x00800000, "C"),
    (0x02000000, "x"),
    (0x10000000, "N"),
    (0x20000000, "P"),
    (0x40000000, "F"),
    (0x00100000, "V"),
    (0x00000400, "m"),
    (0x00040000, "h"),
)
_BIT = {letter: bit for bit, letter in LETTERS}
IMMUTABLE, APPEND = _BIT["i"], _BIT["a"]
SEALING = IMMUTABLE | APPEND
KEPT = sum(_BIT[c] for c in "sucSiadAmjtDTC")
LAYOUT = sum(_BIT[c] for c in "eIhN") | 0x00400000  # EXT4_EOFBLOCKS_FL
_WHY_NOT = {"E": "encrypted", "V": "verity", "x": "DAX", "P": "project inherit", "F": "casefold"}

# What FS_IOC_GETFLAGS answers on a filesystem without inode flags (FAT, NFS, FUSE, …).
NO_FLAGS_ERRNOS = frozenset({errno.ENOTTY, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})


def get_flags(fd: int) -> int:
    """The flags of an open file or directory; 0 where the filesystem has none. OSError."""
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
    except OSError as e:
        if e.errno in NO_FLAGS_ERRNOS:
            return 0
        raise
    return int(struct.unpack("=I", buf)[0])


def set_flags(fd: int, wanted: int, mask: int) -> None:
    """Make the bits of `mask` what `wanted` says, leaving the others (the filesystem's
    own, e.g. ext4's ``e``, which it refuses to clear) as they are. OSError (EPERM for
    ``i``/``a`` without CAP_LINUX_IMMUTABLE, EOPNOTSUPP where a flag is unsupported)."""
    current = get_flags(fd)
    new = (current & ~mask) | (wanted & mask)
    if new != current:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("=I", new))


def letters(flags: int) -> str:
    """``"+iA"``: the flags as chattr writes them (unknown bits in hex)."""
    out = "".join(letter for bit, letter in LETTERS if flags & bit)
    rest = flags & ~sum(bit for bit, _ in LETTERS)
    return "+" + out + (f" 0x{rest:x}" if rest else "")


def not_kept(flags: int) -> list[str]:
    """One report kind per flag a snapshot does not keep (`LAYOUT` ones are not reported);
    a count goes before it: ``not kept: 3 inode flag(s) +P (project inherit)``."""
    if not flags & ~(KEPT | LAYOUT):  # nearly every file: nothing to report
        return []
    out = []
    for bit, letter in LETTERS:
        if flags & bit and not (KEPT | LAYOUT) & bit:
            out.append(f"inode flag(s) +{letter} ({_WHY_NOT.get(letter, 'not restorable')})")
    rest = flags & ~sum(bit for bit, _ in LETTERS) & ~LAYOUT
    if rest:
        out.append(f"inode flag(s) 0x{rest:x} (unknown)")
    return out
