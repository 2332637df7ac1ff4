"""What the mount refuses: one exception class per errno (no FUSE here).

The view (`vaultfs.mount.view`) and the read path (`vaultfs.mount.reads`) raise
these; `vaultfs.mount.fuse_ops.errno_of` is the one place that turns each into its
errno. They live apart from both so that either can raise them without importing
the other.
"""

from __future__ import annotations

from vaultfs.model import BandId


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
    """A ``security.*`` extended attribute the node does not have (EOPNOTSUPP).

    ``ls -l`` asks every file for ``security.selinux``; after one EOPNOTSUPP it stops
    asking for the whole mount (ENODATA would be asked again for every file), which keeps
    ``ls -lR`` fast. Labels a node has are still answered (`vaultfs.mount.attrs.xattr`).
    """


class Archived(VfsError):
    """The content lies in a band that is not readable now (ENODATA, docs/mount.md)."""

    def __init__(self, band: BandId, state: str, file: str = "") -> None:
        super().__init__(f"band {band} is {state}")
        self.band = band
        self.state = state
        self.file = file  # ``collection@vN/path`` (for the restore log and hooks), "" if unknown


class ReadOnly(VfsError):
    """Any change to the filesystem (EROFS)."""
