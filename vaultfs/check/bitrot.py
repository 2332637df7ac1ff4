"""Bit rot: a source file re-read and hashed against a version (`rehash`), and
``check --source``, which does it for every file of a collection's latest version.

Same size and mtime as the version but different bytes is *bit rot suspected*; anything
else that differs is an ordinary change. `rehash` is the one comparison, shared by
``check --source`` and ``vaultfs scrub`` (`vaultfs.check.scrub`).
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vaultfs.check.report import SourceReport
from vaultfs.config import CollectionConfig
from vaultfs.errors import UsageError
from vaultfs.model import (
    Entry,
    TreeId,
)
from vaultfs.output import display_path
from vaultfs.source import (
    ChangedWhileReading,
    NotRegularFile,
    hash_stream,
    open_source,
    sparse_digest,
)
from vaultfs.walk import walk

if TYPE_CHECKING:
    from vaultfs.check.checker import Checker


class Outcome(enum.Enum):
    SAME = "same"  # re-read and hashed: the version's bytes
    ROT = "rot"  # same size and mtime as the version, other bytes
    CHANGED = "changed"  # size or mtime differ (or moved while read): an ordinary change
    MISSING = "missing"
    UNREADABLE = "unreadable"  # an I/O error (a bad sector?) or permissions


@dataclass(frozen=True, slots=True)
class Rehashed:
    outcome: Outcome
    reason: str = ""  # CHANGED, UNREADABLE: why, in words


def rehash(path: bytes, entry: Entry) -> Rehashed:
    """Re-read `path` and compare it with the version's `entry` (a regular file with a blob).

    Read like a snapshot reads (`source.open_source`: no symlink followed, no FIFO
    waited on, atime untouched), so that checking never changes what it checks.
    """
    try:
        fd, st = open_source(path)
    except FileNotFoundError:
        return Rehashed(Outcome.MISSING)
    except NotRegularFile as e:
        return Rehashed(Outcome.CHANGED, e.reason)
    except OSError as e:
        return Rehashed(Outcome.UNREADABLE, _why(e))
    try:
        if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
            return Rehashed(Outcome.CHANGED, "its size or mtime changed")
        # A sparse entry's blob is its data extents; data outside them is other content.
        if entry.sparse is None:
            digest: bytes | None = hash_stream(fd, st)
        else:
            digest = sparse_digest(fd, st, entry.sparse)
    except ChangedWhileReading:
        return Rehashed(Outcome.CHANGED, "it changed while it was read")
    except OSError as e:
        return Rehashed(Outcome.UNREADABLE, _why(e))
    finally:
        os.close(fd)
    return Rehashed(Outcome.SAME if digest == entry.blob else Outcome.ROT)


def _why(e: OSError) -> str:
    what = "an I/O error: is the disk failing?" if e.errno == errno.EIO else e.strerror or str(e)
    return f"cannot be read ({what})"


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
            elif entry.blob is not None:
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
    """One file of the version re-hashed, and where the report lists it."""
    found = rehash(full, entry).outcome
    if found in (Outcome.SAME, Outcome.ROT):
        sr.hashed += 1
    if found is Outcome.ROT:
        sr.bitrot.append(shown)
    elif found is Outcome.CHANGED:
        sr.modified.append(shown)
    elif found is Outcome.UNREADABLE:
        sr.unreadable.append(shown)


def files_of(c: Checker, tid: TreeId, prefix: bytes, out: dict[bytes, Entry]) -> None:
    """Every regular file under `tid`, by its path below the version's root."""
    out.update((prefix + b"/".join(path), e) for path, e in walk(c.vault.tree, tid) if e.kind == "file")
