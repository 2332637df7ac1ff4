"""Small filesystem helpers shared by the layers that write files (bands, stores, spool)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path (the same call for both): a directory's fsync
    makes a rename or a new name in it durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
