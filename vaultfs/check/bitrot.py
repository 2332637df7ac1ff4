"""``check --source``: a collection's files re-hashed against its latest version.

Same size and mtime but different bytes is *bit rot suspected*; anything else that
differs is an ordinary change.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import TYPE_CHECKING

from vaultfs.check.report import SourceReport
from vaultfs.config import CollectionConfig
from vaultfs.errors import UsageError
from vaultfs.model import (
    Entry,
    TreeId,
)
from vaultfs.output import display_path
from vaultfs.source import ChangedWhileReading, sparse_digest
from vaultfs.walk import walk

if TYPE_CHECKING:
    from vaultfs.check.checker import Checker


def check_source(c: Checker, collection: CollectionConfig) -> None:
    sr = SourceReport(collection.name)
    c.report.source = sr
    latest = c.vault.catalog.latest_version(collection.name)
    if latest is None:
        raise UsageError(f"collection {collection.name!r} has no versions yet: nothing to compare with")
    sr.version = latest.number
    known: dict[bytes, Entry] = {}
    files_of(c, latest.root, b"", known)
    root = os.fsencode(collection.path)
    seen: set[bytes] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            sr.files += 1
            seen.add(rel)
            entry = known.get(rel)
            shown = rel.decode("utf-8", "surrogateescape")
            if entry is None:
                sr.added.append(shown)
            elif entry.size != st.st_size or entry.mtime_ns != st.st_mtime_ns:
                sr.modified.append(shown)
            else:
                _compare(sr, full, entry, shown)
    sr.deleted = sorted(p.decode("utf-8", "surrogateescape") for p in set(known) - seen)
    for path in sr.bitrot:
        c.problem(
            f"bit rot suspected: {collection.name}/{display_path(path)} has the size "
            f"and mtime of v{latest.number} but different bytes",
            [f"{collection.name}@v{latest.number}"],
            "do not snapshot it over the good copy: compare with `vaultfs restore "
            "fetch`, check the disk (SMART, filesystem scrub), restore the file",
        )
    for path in sr.unreadable:
        c.problem(
            f"{collection.name}/{display_path(path)} cannot be read",
            [],
            "check the disk and the file's permissions",
        )


def _compare(sr: SourceReport, full: bytes, entry: Entry, shown: str) -> None:
    """Re-hash one source file whose size and mtime are as recorded; bit rot if it differs."""
    try:
        digest = _sha256_file(full, entry)
    except ChangedWhileReading:
        sr.modified.append(shown)
        return
    except OSError:
        sr.unreadable.append(shown)
        return
    sr.hashed += 1
    if entry.blob is not None and digest != entry.blob:
        sr.bitrot.append(shown)


def files_of(c: Checker, tid: TreeId, prefix: bytes, out: dict[bytes, Entry]) -> None:
    """Every regular file under `tid`, by its path below the version's root."""
    out.update((prefix + b"/".join(path), e) for path, e in walk(c.vault.tree, tid) if e.kind == "file")


def _sha256_file(path: bytes, entry: Entry) -> bytes | None:
    """The SHA-256 of the source file's content as `entry` stores it: the whole file, or a
    sparse entry's data extents (None if there is other data outside them)."""
    with open(path, "rb") as f:
        if entry.sparse is not None:
            return sparse_digest(f.fileno(), os.fstat(f.fileno()), entry.sparse)
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()
