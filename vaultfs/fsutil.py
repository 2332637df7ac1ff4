"""Small filesystem helpers shared by the layers (bands, stores, spool, the source scan).

Everything vaultfs creates (store objects of a file:// store, the state dir, LMDB,
spool, cache, logs) is for its owner only: files 0600, directories 0700. The modes
are passed where each file or directory is created, so a umask of 022 (or 0) does
not loosen them; bands are plain tar streams of the owner's files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path (the same call for both): a directory's fsync
    makes a rename or a new name in it durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: Path) -> None:
    """``mkdir -p`` with every directory it creates 0700 (`Path.mkdir` gives the parents
    it creates the umask's default, usually 0755)."""
    if path.is_dir():
        return
    make_private_dirs(path.parent)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise


def open_private(path: Path) -> BinaryIO:
    """Create `path` (it must not exist) for writing, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    return os.fdopen(fd, "wb")


def kind_of(mode: int) -> str:
    """The kind of file an ``st_mode`` says, as messages name it ("FIFO", "symlink", …)."""
    return (
        "regular file"
        if stat.S_ISREG(mode)
        else "directory"
        if stat.S_ISDIR(mode)
        else "symlink"
        if stat.S_ISLNK(mode)
        else "FIFO"
        if stat.S_ISFIFO(mode)
        else "socket"
        if stat.S_ISSOCK(mode)
        else "device"
    )
