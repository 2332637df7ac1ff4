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
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vaultfs.check.report import SourceReport
from vaultfs.config import CollectionConfig
from vaultfs.errors import UsageError
from vaultfs.ignore import Rules
from vaultfs.model import Entry, TreeId, to_text
from vaultfs.output import display_path
from vaultfs.source import (
    ChangedWhileReading,
    NotRegularFile,
    hash_stream,
    kept_files,
    open_source,
    sparse_digest,
)
from vaultfs.walk import walk

if TYPE_CHECKING:
    from vaultfs.check.checker import Checker
    from vaultfs.vault import Vault


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
    """Every file of the collection's source against its latest version. The source is
    walked with the collection's exclusion rules (`vaultfs.ignore`), as a snapshot walks it:
    what a snapshot leaves out is neither "added" nor listed at all."""
    sr = SourceReport(collection.name)
    c.report.source = sr
    latest = c.vault.catalog.latest_version(collection.name)
    if latest is None:
        raise UsageError(f"collection {collection.name!r} has no versions yet: nothing to compare with")
    sr.version = latest.number
    known = dict(version_files(c.vault, latest.root))
    rules = Rules(collection)
    unlisted: list[bytes] = []
    seen: set[bytes] = set()
    for rel, full in kept_files(os.fsencode(collection.path), rules, unlisted):
        sr.files += 1
        seen.add(rel)
        entry = known.get(rel)
        shown = to_text(rel)
        if entry is None:
            sr.added.append(shown)
        elif entry.blob is not None:
            _compare(sr, full, entry, shown)
    sr.unreadable += [to_text(d) for d in unlisted]
    under = tuple(d + b"/" for d in unlisted)  # their files are unknown, not deleted
    sr.deleted = sorted(to_text(p) for p in set(known) - seen if not p.startswith(under))
    c.report.notes += rules.notes
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


def version_files(vault: Vault, root: TreeId) -> Iterator[tuple[bytes, Entry]]:
    """Every regular file of the version whose root tree is `root`, by its path below the
    root: the one walk of a version's files for ``check --source`` and ``scrub``. The second
    and later names of a hard-linked file come without a blob: they have none of their own
    (their bytes are the first name's, read and hashed once, under the first name)."""
    for parts, e in walk(vault.tree, root):
        if e.kind == "file":
            yield b"/".join(parts), e if e.hardlink is None else replace(e, blob=None)
