"""Snapshot one collection: scan, read what changed, pack bands, upload, commit.

The package, one thing per module (as restic's archiver: scanner, file saver, tree saver):

* ``__init__`` — `Snapshot`, the orchestrator of one run, and `check_root`;
* `files` — the file saver: read, hash, dedup and pack files into bands, read-ahead;
* `trees` — the tree saver: directory listings bottom-up, the directory memo;
* `diff` — what changed against the latest version (counts, cold paths, mass removal);
* `commit` — the last band, the version record, the catalog rows;
* `spool` — bands between disk and store: the uploader thread, recovery after a crash.
  (The scan itself is `vaultfs.source.Scanner`.)

Steps 2 and 3 are the *intake* (`Snapshot._gather`: where entries and contents come
from); the rest is the vault side. A hub (`vaultfs.hub.server.HubSnapshot`) replaces
only the intake: its client scans, hashes and sends listings and contents, which land in
the same tree saver (`TreeSaver.store`) and file saver (`FileSaver.pack_received`, the
SHA-256 recomputed), and the same diff, commit, spool and lock follow.

Order of work, and why it is safe to kill at any point:

1. *Recover* the spool: a band finished by an earlier run but not uploaded is
   uploaded now; half-written ``.part`` bands are deleted; unfinished
   multipart uploads are aborted. Then one LIST of the store's bands: a band
   the catalog knows that is gone has its blobs marked lost (`vaultfs.heal`),
   so the files holding them are read and stored again below.
2. *Scan* (stat only) and consult the files cache: a file whose (dev, inode,
   size, mtime_ns, ctime_ns) did not change is not read.
3. *Read* the others (`files`): hash, dedup against every blob of the vault, and pack
   new content into bands in the spool. A closed band is uploaded by a
   background thread while the next one fills; once on the store its blobs are
   registered in the catalog, so a later run reuses them instead of sending
   them again (resume at band granularity).
4. *Trees* (`trees`): directory listings are encoded bottom-up, except that a directory
   whose entries' stat data match the latest version's (the directory memo,
   `catalog.schema`) keeps that listing; a root equal to the latest version's
   makes no new version.
5. *Diff* (`diff`) against the latest version, then *commit* (`commit`): the last band
   carries the new trees and the version record in its catalog; after it is stored,
   the version record is written with If-None-Match (the commit point), then the
   catalog records the version. Nothing is visible before that point.

Threads, and who stops each:

* the caller's thread scans, reads and hashes (and runs the band writer's stall hook,
  `FileSaver._read_ahead`);
* the band writer's compression pool and writer thread, owned by the band writer
  (`vaultfs.band.BandWriter`): closing or aborting the band stops them — the file
  saver closes each full band and the commit the last one; after a failure
  `FileSaver.abort` aborts the band being filled;
* one uploader thread, owned by the `Snapshot` through `spool.Uploader`: started after
  the scan, stopped by the commit once every band is queued, and on every other path
  (an exception, KeyboardInterrupt) stopped and joined by the ``with`` block in `run`.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vaultfs import archive, heal, index, testpoints  # index: issue 5
from vaultfs.config import CollectionConfig
from vaultfs.errors import SourceRefused
from vaultfs.ignore import Rules
from vaultfs.model import RootMeta, TreeId, VersionInfo, level_range
from vaultfs.snapshot.commit import commit_version, record_unchanged
from vaultfs.snapshot.diff import Changes, MassRemoval, diff_versions, mass_removal, top_in
from vaultfs.snapshot.files import FINGERPRINT_PIECE, SMALL_FILE, FileSaver, ReadProgress
from vaultfs.snapshot.spool import Uploader, recover_spool
from vaultfs.snapshot.trees import Memos, TreeSaver
from vaultfs.source import Problem, ScannedDir, Scanner
from vaultfs.vault import Vault

__all__ = [
    "FINGERPRINT_PIECE",
    "SMALL_FILE",
    "MassRemoval",
    "NoProgress",
    "Progress",
    "Snapshot",
    "SnapshotResult",
    "check_root",
    "source_root_meta",
]


class Progress(ReadProgress, Protocol):
    def scanned(self, files: int, size: int) -> None: ...
    def stage(self, text: str) -> None: ...


class NoProgress:
    def scanned(self, files: int, size: int) -> None:
        pass

    def reading(self, files_total: int, bytes_total: int) -> None:
        pass

    def advance(self, files: int, size: int) -> None:
        pass

    def stage(self, text: str) -> None:
        pass


@dataclass(slots=True)
class SnapshotResult:
    collection: str
    version: VersionInfo | None  # the new version, or None when nothing changed
    latest: VersionInfo | None  # the latest version after this run
    unchanged: bool
    problems: list[Problem] = field(default_factory=list)
    # Metadata the source holds that the version does not (`vaultfs.source.NotKept`):
    # kind → count, reported once per snapshot.
    not_kept: dict[str, int] = field(default_factory=dict)
    modified: list[bytes] = field(default_factory=list)  # cold collections: changed content
    deleted: list[bytes] = field(default_factory=list)  # cold collections: vanished files
    previous: int | None = None  # the version before the new one
    # Cold collections: `previous`, when this version replaced, deleted or now leaves out
    # files it holds (`vaultfs.retention.pins` then pins it: it has their last copy).
    pinned: int | None = None
    files_read: int = 0
    bytes_read: int = 0
    bands: int = 0
    bytes_stored: int = 0
    archived: int = 0  # bands moved to the archive class by this run
    dirs: int = 0  # directories in the new tree
    dirs_reused: int = 0  # of them, listings taken over unchanged from the latest version
    seconds: float = 0.0
    upload_seconds: float = 0.0  # time the uploader spent sending bands
    levels: tuple[int, int] | None = None  # lowest and highest zstd level of the frames stored
    mass_removal: MassRemoval | None = None  # more files removed than max_removed allows
    lost_bands: list[heal.MissingBand] = field(default_factory=list)  # found gone by this run
    restored_lost: int = 0  # files read whose blob was lost: stored again (healed)
    preview_bytes: int = 0  # cold: bytes kept hot in this run's preview objects (snapshot/previews.py)
    excluded: int = 0  # entries left out by the collection's rules (a directory counts once)
    now_excluded: int = 0  # files of the previous version that the rules leave out now
    now_excluded_under: list[bytes] = field(default_factory=list)  # the excluded paths they lie under
    now_included: int = 0  # files added that the previous run's rules left out
    notes: list[str] = field(default_factory=list)  # rules that could not be applied fully

    @property
    def cold_changes(self) -> bool:
        return bool(self.modified or self.deleted)

    @property
    def warnings(self) -> bool:
        """Whether this run ends with exit status 3 (files skipped, metadata not kept, cold
        changes, mass removal, bands found missing from the store)."""
        return bool(
            self.problems or self.not_kept or self.cold_changes or self.mass_removal or self.lost_bands
        )


class Snapshot:
    """One run of ``vaultfs snapshot`` for one collection; the caller holds the vault lock."""

    def __init__(
        self,
        vault: Vault,
        collection: CollectionConfig,
        progress: Progress | None = None,
        now: Callable[[], int] = time.time_ns,
    ) -> None:
        self.vault = vault
        self.collection = collection
        self.progress = progress or NoProgress()
        self.now = now
        self._uploader = Uploader(vault, collection.name)
        self.files = FileSaver(vault, collection, self._uploader, self.progress)
        self._root_meta: RootMeta | None = None  # the source root's own metadata, from the scan
        self._excluded: set[bytes] = set()  # paths the rules left out (nothing below them is listed)
        self._left_out_before: frozenset[bytes] = frozenset()  # the same, of the previous run
        self.result = SnapshotResult(collection.name, None, None, unchanged=False)

    def run(self) -> SnapshotResult:
        started = time.monotonic()
        root = os.fsencode(self.collection.path)
        self._check_source()
        self.progress.stage("recovering")
        recover_spool(self.vault)
        index.adopt_committed(self.vault, self.collection.name)  # issue 5: with their bands
        # A band gone from the store is never a dedup target again: its blobs are marked
        # lost before the files cache and the memos are consulted (docs/snapshots.md).
        on_store = heal.store_bands(self.vault.store)
        self.result.lost_bands = heal.record_missing_bands(
            self.vault, heal.missing_bands(self.vault, on_store)
        )
        self.files.lost = set(self.vault.catalog.lost_blobs())
        try:
            with self._uploader:  # stopped and joined on every path; the commit stops it first
                self._scan_read_commit(root)  # its scan records are freed before what follows
        except BaseException:
            self.files.abort()
            raise
        self.files.cache_rows = []
        index.publish(self.vault)  # issue 5: bring the consolidated index on the store up to date
        # Cold bands move to the archive class once their version is committed;
        # a move interrupted by a crash is finished by whichever snapshot runs next.
        self.result.archived = len(archive.archive_pending(self.vault))
        self.result.seconds = time.monotonic() - started
        return self.result

    def _check_source(self) -> None:
        """Refuse a source that failed as a whole, before anything else is done."""
        check_root(self.collection)

    def _scan_read_commit(self, root: bytes) -> None:
        latest = self.vault.catalog.latest_version(self.collection.name)
        root_id, trees = self._gather(root, latest)
        self.result.dirs, self.result.dirs_reused = trees.dirs, trees.reused
        # The root's own mode or owner is in no listing: compared on its own.
        if latest is not None and root_id == latest.root and self._root_meta == latest.root_meta:
            self._finish_unchanged(latest, trees)
        else:
            left_out = self._left_out_before if latest is not None else frozenset()
            changes = diff_versions(
                self.vault, latest.root if latest else None, root_id, trees.listings, left_out
            )
            self._commit(root_id, latest, trees, changes)

    def _gather(self, root: bytes, latest: VersionInfo | None) -> tuple[TreeId, TreeSaver]:
        """The intake: where the new version's entries and contents come from. Here, the
        scan of the source and the file saver's reads; a hub's session feeds the same vault
        side from a client instead (`vaultfs.hub.server`). Returns the root tree and the
        tree saver holding the listings for the diff and the commit; sets `_root_meta`."""
        self.progress.stage("scanning")
        with self.vault.catalog.files_reader(self.collection.name) as cache:
            memos = Memos(cache, latest)
            rules = Rules(self.collection, self.vault.config.git_excludes_default)
            scanner = Scanner(root, memos.signature if memos.valid else None, rules)
            try:
                top = scanner.scan()
            except OSError as e:
                raise _unreadable_root(self.collection, e) from None
            self.result.problems = scanner.problems
            self.result.not_kept = dict(sorted(scanner.not_kept.items()))
            self.result.notes = rules.notes
            self.result.excluded = len(scanner.excluded)
            self._excluded = set(scanner.excluded)
            self._left_out_before = cache.left_out()
            self._root_meta = source_root_meta(root, top)
            testpoints.reach("after-scan")
            self._uploader.start()
            self.files.read_files(root, scanner.files, cache, scanner.problems)
        self.result.files_read, self.result.bytes_read = self.files.files_read, self.files.bytes_read
        self.result.restored_lost = self.files.restored_lost
        self.result.preview_bytes = self.files.previews.bytes_kept if self.files.previews else 0
        self.progress.stage("writing trees")
        trees = TreeSaver(self.vault, memos)
        return trees.build(top), trees

    def _left_out_rows(self) -> set[bytes] | None:
        """What this run left out, for the catalog's left-out rows; None when the rows
        already say so (a no-change snapshot writes nothing for them)."""
        return None if self._excluded == self._left_out_before else self._excluded

    def _finish_unchanged(self, latest: VersionInfo, trees: TreeSaver) -> None:
        verified = record_unchanged(
            self.vault, self.files, self._uploader, trees, latest, self.now, self._left_out_rows()
        )
        self.result.unchanged = True
        self.result.latest = verified
        self._collect_band_stats()

    def _commit(
        self, root_id: TreeId, latest: VersionInfo | None, trees: TreeSaver, changes: Changes
    ) -> None:
        self.progress.stage("committing")
        version = commit_version(
            self.vault,
            self.files,
            self._uploader,
            trees,
            changes,
            root=root_id,
            root_meta=self._root_meta,
            latest=latest,
            now=self.now,
            left_out=self._left_out_rows(),
        )
        self.result.version = version
        self.result.latest = version
        self.result.previous = latest.number if latest is not None else None
        # Files a rule now leaves out are still on the source: neither deleted nor a failed
        # source, so no warning and no mass removal. But the new version lacks them: in a
        # cold collection the previous version holds their last copy and is pinned.
        tops = [top_in(p, self._excluded) for p in changes.deleted]
        deleted = [p for p, top in zip(changes.deleted, tops, strict=True) if top is None]
        self.result.now_excluded = len(changes.deleted) - len(deleted)
        self.result.now_excluded_under = sorted({top for top in tops if top is not None})
        self.result.now_included = changes.now_included
        if self.collection.tier == "cold" and latest is not None:
            self.result.modified = changes.modified
            self.result.deleted = deleted
            if changes.modified or changes.deleted:
                self.result.pinned = latest.number
        removed = changes.removed - self.result.now_excluded
        self.result.mass_removal = mass_removal(self.collection.max_removed, removed, latest)
        self._collect_band_stats()

    def _collect_band_stats(self) -> None:
        uploaded = self._uploader.uploaded
        self.result.bands = len(uploaded)
        self.result.bytes_stored = sum(b.size for b in uploaded)
        self.result.upload_seconds = self._uploader.busy_seconds
        self.result.levels = level_range(uploaded)


def check_root(collection: CollectionConfig, done: str = "snapshotted") -> None:
    """Refuse a root that is missing, not a directory, unreadable or empty (SourceRefused).

    `done` is what the refusal says was not done ("nothing was snapshotted"; scrub passes
    "scrubbed").

    To a snapshot, an unmounted volume looks like a collection whose files were all
    deleted: the version would be empty and say so with exit 0. A collection that is
    meant to be empty says ``allow_empty = true``.
    """
    name, path = collection.name, collection.path
    try:
        with os.scandir(os.fsencode(path)) as entries:
            empty = next(entries, None) is None
    except FileNotFoundError:
        raise SourceRefused(
            f"collection {name}: {path} does not exist (is the volume mounted?); nothing was "
            f"{done}: mount it or fix [collections.{name}].path"
        ) from None
    except NotADirectoryError:
        raise SourceRefused(
            f"collection {name}: {path} is not a directory (is the volume mounted?); "
            f"nothing was {done}: fix [collections.{name}].path"
        ) from None
    except OSError as e:
        raise _unreadable_root(collection, e, done) from None
    if empty and not collection.allow_empty:
        raise SourceRefused(
            f"collection {name}: {path} is empty (is the volume mounted?); nothing was "
            f"{done}: mount it, or set allow_empty = true in [collections.{name}] "
            "if it is meant to be empty"
        )


def _unreadable_root(collection: CollectionConfig, e: OSError, done: str = "snapshotted") -> SourceRefused:
    return SourceRefused(
        f"collection {collection.name}: cannot read {collection.path} ({e.strerror}); nothing "
        f"was {done}: check that the volume is mounted and readable by this user"
    )


def source_root_meta(root: bytes, top: ScannedDir) -> RootMeta:
    """The collection root's mode, owner, mtime and xattrs (of the directory a symlinked
    root points to: its own mode, not the link's 0777, is what guards the files)."""
    st = top.st if not stat.S_ISLNK(top.st.st_mode) else os.stat(root)
    return RootMeta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, top.xattrs, top.flags)
