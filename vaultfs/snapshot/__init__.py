"""Snapshot one collection: scan, read what changed, pack bands, upload, commit.

Order of work, and why it is safe to kill at any point:

1. *Recover* the spool: a band finished by an earlier run but not uploaded is
   uploaded now; half-written ``.part`` bands are deleted; unfinished
   multipart uploads are aborted. Then one LIST of the store's bands: a band
   the catalog knows that is gone has its blobs marked lost (`vaultfs.heal`),
   so the files holding them are read and stored again below.
2. *Scan* (stat only) and consult the files cache: a file whose (dev, inode,
   size, mtime_ns, ctime_ns) did not change is not read.
3. *Read* the others: hash, dedup against every blob of the vault, and pack
   new content into bands in the spool. A closed band is uploaded by a
   background thread while the next one fills; once on the store its blobs are
   registered in the catalog, so a later run reuses them instead of sending
   them again (resume at band granularity).
4. *Trees*: directory listings are encoded bottom-up, except that a directory
   whose entries' stat data match the latest version's (the directory memo,
   `catalog.schema`) keeps that listing; a root equal to the latest version's
   makes no new version.
5. *Commit*: the last band carries the new trees and the version record in its
   catalog; after it is stored, the version record is written with
   If-None-Match (the commit point), then the catalog records the version.
   Nothing is visible before that point.

Threads: the caller's thread scans, reads and hashes; the band writer
compresses in its own pool; one uploader thread (`spool.Uploader`) sends closed bands.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from vaultfs import archive, heal, index, testpoints  # index: issue 5
from vaultfs import band as bandfmt
from vaultfs.catalog import CatalogWriter, DirMemo, FileCacheLookup, FileCacheRow
from vaultfs.config import CollectionConfig
from vaultfs.errors import SourceRefused
from vaultfs.model import (
    BandId,
    BlobId,
    ChangeStats,
    Entry,
    RootMeta,
    TreeId,
    VersionInfo,
    encode_tree,
    to_text,
    tree_id,
)
from vaultfs.snapshot.spool import Uploader, recover_spool
from vaultfs.source import (
    ChangedWhileReading,
    FileStat,
    NotRegularFile,
    Problem,
    ScannedDir,
    ScannedFile,
    Scanner,
    hash_stream,
    open_source,
    read_into,
    read_small,
    same_file_state,
)
from vaultfs.vault import Vault

SMALL_FILE = 1024 * 1024  # read whole into memory: one read serves hash and band
FINGERPRINT_PIECE = 64 * 1024  # `_probable_copy`: bytes hashed from each end of a large file
READ_AHEAD_FILE = 256 * 1024  # files read ahead while zstd catches up (per-file cost dominates)
READ_AHEAD_BYTES = 4 * 1024 * 1024  # at most this much read ahead at a time
READ_LATER = (memoryview(b""), BlobId(b""))  # a file read ahead turned out large: read it later
CHANGED = "changed while it was read; back it up again when it is quiet"
WARM_FRAME_SIZE = 1024 * 1024


class Progress(Protocol):
    def scanned(self, files: int, size: int) -> None: ...
    def reading(self, files_total: int, bytes_total: int) -> None: ...
    def advance(self, files: int, size: int) -> None: ...
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
    modified: list[bytes] = field(default_factory=list)  # cold collections: changed content
    deleted: list[bytes] = field(default_factory=list)  # cold collections: vanished files
    files_read: int = 0
    bytes_read: int = 0
    bands: int = 0
    bytes_stored: int = 0
    archived: int = 0  # bands moved to the archive class by this run
    dirs: int = 0  # directories in the new tree
    dirs_reused: int = 0  # of them, listings taken over unchanged from the latest version
    seconds: float = 0.0
    mass_removal: MassRemoval | None = None  # more files removed than max_removed allows
    lost_bands: list[heal.MissingBand] = field(default_factory=list)  # found gone by this run
    restored_lost: int = 0  # files read whose blob was lost: stored again (healed)

    @property
    def cold_changes(self) -> bool:
        return bool(self.modified or self.deleted)

    @property
    def warnings(self) -> bool:
        """Whether this run ends with exit status 3 (files skipped, cold changes, mass removal,
        bands found missing from the store)."""
        return bool(self.problems or self.cold_changes or self.mass_removal or self.lost_bands)


@dataclass(frozen=True, slots=True)
class MassRemoval:
    """A version that lacks more of the previous version's files than ``max_removed`` allows.

    It is still written (it says what the source held; the previous version keeps the
    files), but often the source is what failed: an unmounted volume, a failing disk.
    """

    removed: int
    previous_files: int
    previous_version: int
    limit: str  # max_removed as configured, e.g. "50%"


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
        cfg = vault.config
        tier_frame = bandfmt.FRAME_SIZE_DEFAULT if collection.tier == "cold" else WARM_FRAME_SIZE
        self.frame_size = collection.frame_size or tier_frame
        self.level = (
            collection.compression_level
            if collection.compression_level is not None
            else cfg.compression_level
        )
        self.band_size = cfg.band_size
        self._band: bandfmt.BandWriter | None = None
        self._band_ids: list[BandId] = []
        self._new_blobs: set[BlobId] = set()
        self._large_files: set[tuple[int, int]] | None = None
        self._fingerprints: set[tuple[int, bytes]] = set()  # large files read in this run
        self._cache_rows: list[tuple[bytes, FileCacheRow]] = []  # files read: their new rows
        self._bytes_added = 0  # content of the blobs this run stored
        self._uploader = Uploader(vault, collection.name)
        self._known: FileCacheLookup | None = None  # the catalog's blobs, while files are read
        self._member_prefix = collection.name.encode() + b"/"  # band members: <collection>/<path>
        self._root_meta: RootMeta | None = None  # the source root's own metadata, from the scan
        self._lost: set[BlobId] = set()  # blobs known lost when the run began
        self.result = SnapshotResult(collection.name, None, None, unchanged=False)

    # ---- the run -----------------------------------------------------------------------

    def run(self) -> SnapshotResult:
        started = time.monotonic()
        root = os.fsencode(self.collection.path)
        check_root(self.collection)
        self.progress.stage("recovering")
        recover_spool(self.vault)
        index.adopt_committed(self.vault, self.collection.name)  # issue 5: with their bands
        # A band gone from the store is never a dedup target again: its blobs are marked
        # lost before the files cache and the memos are consulted (docs/snapshots.md).
        on_store = heal.store_bands(self.vault.store)
        self.result.lost_bands = heal.record_missing_bands(
            self.vault, heal.missing_bands(self.vault, on_store))
        self._lost = set(self.vault.catalog.lost_blobs())
        self._scan_read_commit(root)  # its scan records are freed before what follows
        self._cache_rows = []
        index.publish(self.vault)  # issue 5: bring the consolidated index on the store up to date
        # Cold bands move to the archive class once their version is committed;
        # a move interrupted by a crash is finished by whichever snapshot runs next.
        self.result.archived = len(archive.archive_pending(self.vault))
        self.result.seconds = time.monotonic() - started
        return self.result

    def _scan_read_commit(self, root: bytes) -> None:
        self.progress.stage("scanning")
        latest = self.vault.catalog.latest_version(self.collection.name)
        with self.vault.catalog.files_reader(self.collection.name) as cache:
            memos = _Memos(cache, latest)
            scanner = Scanner(root, memos.signature if memos.valid else None)
            try:
                top = scanner.scan()
            except OSError as e:
                raise _unreadable_root(self.collection, e) from None
            self.result.problems = scanner.problems
            self._root_meta = _root_meta(root, top)
            testpoints.reach("after-scan")
            self._uploader.start()
            try:
                self._read_files(root, scanner.files, cache)
            except BaseException:
                self._abort_writing()
                raise
        try:
            self.progress.stage("writing trees")
            trees = _Trees(memos)
            stats = _Stats()
            root_id = self._build_tree(top, trees, stats)
            self.result.dirs, self.result.dirs_reused = trees.dirs, trees.reused
            # The root's own mode or owner is in no listing: compared on its own.
            if latest is not None and root_id == latest.root and self._root_meta == latest.root_meta:
                self._finish_unchanged(latest, trees)
            else:
                self._diff(latest.root if latest else None, root_id, b"", trees.listings, stats)
                self._commit(root_id, latest, trees, stats)
        except BaseException:
            self._abort_writing()
            raise

    def _abort_writing(self) -> None:
        self._uploader.stop(abort=True)
        if self._band is not None:
            self._band.abort()

    # ---- reading files -----------------------------------------------------------------

    def _read_files(self, root: bytes, files: list[ScannedFile], cache: FileCacheLookup) -> None:
        to_read: list[ScannedFile] = []
        for f in files:
            if f.link_of is not None:
                continue
            row = cache.stat_key(f.rel)
            st = f.st
            if (
                row is not None
                and row[:5] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                and cache.has_blob(BlobId(row[5]))
            ):
                f.blob = BlobId(row[5])
                f.needs_read = False
            else:
                to_read.append(f)
        self.progress.reading(len(to_read), sum(f.st.st_size for f in to_read))
        self._cache_rows = []
        self._ahead = _ReadAhead(root, to_read)
        # Dedup lookups go through the scan's read transaction (one per file cost ~10 µs);
        # blobs this run stores after it began are in `_new_blobs`.
        self._known = cache
        try:
            for i, f in enumerate(to_read):
                if self._ahead.take(i):
                    self._read_one(root, f)
                    self.progress.advance(1, f.st.st_size)
                if self._ahead.done:
                    self._pack_read_ahead()
        finally:
            self._known = None
        for f in files:  # hard links follow their first name
            if f.link_of is not None:
                f.blob = f.link_of.blob
                f.skipped = f.link_of.skipped
        # The band being filled stays open: the commit closes it with the new trees
        # and the version record in its catalog (docs/band-format.md), so a small snapshot
        # writes one band, not a data band and a metadata band.
        self._uploader.drain()

    def _read_one(self, root: bytes, f: ScannedFile) -> None:
        opened = self._open(root, f)
        if opened is None:
            return None
        fd, before = opened
        try:
            if before.st_size <= SMALL_FILE:
                data, blob = read_small(fd, before)
                self._pack_small(f, data, blob)
                return None
            if self._likely_known(before) or self._probable_copy(fd, before):
                blob = hash_stream(fd, before)  # hash first: packing is likely not needed
                testpoints.reach("after-hash")
                if self._is_new(blob):
                    self._make_room(before.st_size)
                    assert self._band is not None
                    self._band.add_blob_stream(
                        self._member_name(f), _meta(f), before.st_size,
                        read_into(fd), blob,
                        skip_if=lambda _: self._changed_since(fd, before),
                    )
                    self._blob_added(blob, before.st_size)
            else:
                blob = self._pack_large(f, fd, before)
        except (ChangedWhileReading, bandfmt.ContentChanged):
            return self._skip(f, CHANGED)
        except OSError as e:
            return self._skip(f, f"cannot read ({e.strerror})")
        finally:
            os.close(fd)
        self._file_read(f, blob)
        return None

    def _open(self, root: bytes, f: ScannedFile) -> tuple[int, os.stat_result] | None:
        """Open a file to read and check it is the one the scan saw (else skip it: None)."""
        try:
            fd, before = open_source(root + b"/" + f.rel)
        except FileNotFoundError:
            self._skip(f, "vanished before it could be read")
            return None
        except NotRegularFile as e:
            self._skip(f, e.reason)
            return None
        except OSError as e:
            self._skip(f, f"cannot read ({e.strerror})")
            return None
        if (before.st_ino, before.st_dev) != (f.st.st_ino, f.st.st_dev):
            os.close(fd)
            self._skip(f, "was replaced during the snapshot")
            return None
        if not same_file_state(f.st, before):
            f.st = FileStat.of(before)  # else keep the scan's compact record
        return fd, before

    def _pack_small(self, f: ScannedFile, data: memoryview, blob: BlobId) -> None:
        if self._is_new(blob):
            self._make_room(len(data))
            assert self._band is not None
            self._band.add_blob(self._member_name(f), _meta(f), data, blob)
            self._blob_added(blob, len(data))
        self._file_read(f, blob)

    def _file_read(self, f: ScannedFile, blob: BlobId) -> None:
        f.blob = blob
        st = f.st
        self.result.files_read += 1
        if blob in self._lost:  # stored again by this run (`_is_new`): the blob is healed
            self.result.restored_lost += 1
        self.result.bytes_read += st.st_size
        self._cache_rows.append(
            (f.rel, FileCacheRow(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, blob))
        )

    def _read_ahead(self) -> bool:
        """The band writer's stall hook: zstd is behind on a large file, so read and
        hash the next small files meanwhile (per-file work that would otherwise leave
        the compression threads idle later). They are packed right after the large
        file. False when there is nothing (more) to read ahead."""
        ahead = self._ahead
        i = ahead.next_small()
        if i is None:
            return False
        f = ahead.files[i]
        ahead.pending_bytes += f.st.st_size
        opened = self._open(ahead.root, f)
        if opened is None:
            ahead.done.append((f, None))
            return True
        fd, before = opened
        try:
            if before.st_size > READ_AHEAD_FILE:  # grew: read it with the main loop's rules
                ahead.done.append((f, READ_LATER))
            else:
                ahead.done.append((f, read_small(fd, before)))
        except ChangedWhileReading:
            self._skip(f, CHANGED)
            ahead.done.append((f, None))
        except OSError as e:
            self._skip(f, f"cannot read ({e.strerror})")
            ahead.done.append((f, None))
        finally:
            os.close(fd)
        return True

    def _pack_read_ahead(self) -> None:
        ahead = self._ahead
        done, ahead.done, ahead.pending_bytes = ahead.done, [], 0
        for f, got in done:
            if got is READ_LATER:
                self._read_one(ahead.root, f)
            elif got is not None:
                self._pack_small(f, *got)
            self.progress.advance(1, f.st.st_size)

    def _pack_large(self, f: ScannedFile, fd: int, before: os.stat_result) -> BlobId:
        """One read that hashes and packs; rolled back if the vault already has the blob."""
        self._make_room(before.st_size)
        assert self._band is not None
        digests: list[BlobId] = []

        def known(digest: bytes) -> bool:
            testpoints.reach("after-hash")
            self._changed_since(fd, before)
            digests.append(BlobId(digest))
            return not self._is_new(BlobId(digest))

        loc = self._band.add_blob_stream(
            self._member_name(f), _meta(f), before.st_size, read_into(fd),
            skip_if=known,
        )
        if loc is not None:
            self._blob_added(digests[0], before.st_size)
        return digests[0]

    def _likely_known(self, st: os.stat_result) -> bool:
        """Whether a large file probably has content the vault already holds.

        True when the latest version has a large file of the same size and mtime
        (a file moved or renamed: the files cache, keyed by path, missed it).
        Such files are hashed before they are packed, so a reorganised photo
        library costs a hash pass, not a compression pass.
        """
        if self._large_files is None:
            self._large_files = set()
            latest = self.vault.catalog.latest_version(self.collection.name)
            if latest is not None:
                self._collect_large(latest.root, self._large_files)
        return (st.st_size, st.st_mtime_ns) in self._large_files

    def _probable_copy(self, fd: int, st: os.stat_result) -> bool:
        """Whether a large file is probably a copy of one read earlier in this run.

        A copy has a new mtime and path, so neither the files cache nor `_likely_known`
        sees it. Every large file leaves a fingerprint — its size and the SHA-256 of its
        first and last `FINGERPRINT_PIECE` bytes (a fraction of a millisecond) — and a
        file whose fingerprint was seen is hashed before it is packed: a copied folder
        of photos costs a hash pass, not a compression pass that is then rolled back.
        A wrong guess costs one extra read; the whole-file SHA-256 still decides.
        """
        size = st.st_size
        head = os.pread(fd, FINGERPRINT_PIECE, 0)
        tail = os.pread(fd, FINGERPRINT_PIECE, max(size - FINGERPRINT_PIECE, 0))
        mark = (size, hashlib.sha256(head + tail).digest())
        if mark in self._fingerprints:
            return True
        self._fingerprints.add(mark)
        return False

    def _collect_large(self, tree: TreeId, out: set[tuple[int, int]]) -> None:
        for e in self.vault.tree(tree):
            if e.kind == "file" and e.size > SMALL_FILE:
                out.add((e.size, e.mtime_ns))
            elif e.kind == "dir" and e.tree is not None:
                self._collect_large(e.tree, out)

    @staticmethod
    def _changed_since(fd: int, before: os.stat_result) -> bool:
        """Raise ChangedWhileReading if the open file moved since ``before``; else False."""
        if not same_file_state(before, os.fstat(fd)):
            raise ChangedWhileReading
        return False

    def _skip(self, f: ScannedFile, reason: str) -> None:
        f.skipped = True
        self.result.problems.append(Problem(f.rel, reason))

    def _is_new(self, blob: BlobId) -> bool:
        assert self._known is not None, "only while files are read"
        return blob not in self._new_blobs and not self._known.has_blob(blob)

    def _blob_added(self, blob: BlobId, size: int) -> None:
        self._new_blobs.add(blob)
        self._bytes_added += size
        if self._band is not None and self._band.uncompressed_size >= self.band_size:
            self._close_band(final_extra=None)

    def _member_name(self, f: ScannedFile) -> bytes:
        return self._member_prefix + f.rel

    def _make_room(self, size: int) -> None:
        """Close the current band first if this file would push it past band_size."""
        band = self._band
        if band is not None and band.uncompressed_size > 0 and (
            band.uncompressed_size + size > self.band_size
        ):
            self._close_band(final_extra=None)
        if self._band is None:
            self._open_band()

    def _open_band(self) -> bandfmt.BandWriter:
        band_id = bandfmt.new_band_id()
        path = self.vault.spool_dir / f"{band_id}.tar.zst.part"
        self._band = bandfmt.BandWriter(
            path, band_id, level=self.level, frame_size=self.frame_size,
            threads=self.vault.config.threads,
        )
        self._band.on_stall = self._read_ahead
        self._band_ids.append(BandId(band_id))
        return self._band

    def _close_band(self, final_extra: dict[str, object] | None) -> bandfmt.ClosedBand | None:
        band = self._band
        if band is None:
            return None
        self._band = None
        extra: dict[str, object] = {"collection": self.collection.name}
        if final_extra:
            extra.update(final_extra)
        # The uploader makes the band durable and gives it its final name: flushing
        # a 1 GiB band to disk then overlaps with packing the next one.
        band.on_stall = None  # files read ahead now would wait for the next loop turn
        closed = band.close(extra, sync=False)
        self._uploader.put(closed)
        return closed

    # ---- trees -------------------------------------------------------------------------

    def _build_tree(self, node: ScannedDir, trees: _Trees, stats: _Stats) -> TreeId:
        """Encode a directory's listing bottom-up; remember every new listing for the diff.

        An unchanged directory (`ScannedDir.unchanged`) gets its recorded tree back when
        its subdirectories' trees are as recorded too, else the recorded listing with
        their new trees. Directories whose listing is complete and plain get a memo row
        for the next run (`_Trees.memo_rows`).
        """
        trees.dirs += 1
        if node.unchanged:
            return self._reuse_tree(node, trees, stats)
        entries: list[Entry] = []
        subtrees: list[tuple[bytes, TreeId]] = []
        files = size = 0
        complete = node.signature is not None
        for child in node.children:
            if isinstance(child, ScannedDir):
                if child.unreadable:
                    complete = False
                else:
                    sub = self._build_tree(child, trees, stats)
                    subtrees.append((child.name, sub))
                    entries.append(_dir_entry(child, sub))
            elif isinstance(child, ScannedFile):
                if not child.skipped and child.blob is not None:
                    entries.append(_file_entry(child))
                    files += 1
                    size += child.st.st_size
                else:
                    complete = False
            else:
                entries.append(child)
        stats.files += files
        stats.size += size
        tid = self._store_tree(entries, trees)
        if complete and node.signature is not None:
            trees.memo_rows.append(
                (node.rel, DirMemo(node.signature, tid, files, size, tuple(subtrees))))
        return tid

    def _reuse_tree(self, node: ScannedDir, trees: _Trees, stats: _Stats) -> TreeId:
        """An unchanged directory: its recorded tree, or the recorded listing with the new
        trees of subdirectories that changed inside (their own entries' stat data do not
        show that). The memo's trees are the latest version's, so they are in the catalog."""
        memo = trees.memos.found[node.rel]
        stats.files += memo.files
        stats.size += memo.size
        subtrees = tuple(
            (child.name, None if child.unreadable else self._build_tree(child, trees, stats))
            for child in node.children
            if isinstance(child, ScannedDir)
        )
        if subtrees == memo.subtrees:
            trees.memo_rows.append((node.rel, memo))
            trees.reused += 1
            return memo.tree
        now = dict(subtrees)
        entries = []
        for e in self.vault.tree(memo.tree):
            if e.kind == "dir" and e.name in now:
                sub = now[e.name]
                if sub is None:
                    continue  # unreadable this time: left out, as a rebuilt listing would
                e = replace(e, tree=sub)
            entries.append(e)
        tid = self._store_tree(entries, trees)
        if all(sub is not None for _, sub in subtrees):
            complete = tuple((name, sub) for name, sub in subtrees if sub is not None)
            trees.memo_rows.append((node.rel, replace(memo, tree=tid, subtrees=complete)))
        return tid

    def _store_tree(self, entries: list[Entry], trees: _Trees) -> TreeId:
        encoded = encode_tree(entries)
        tid = tree_id(encoded)
        trees.listings[tid] = entries
        if tid not in trees.new and not self.vault.catalog.has_tree(tid):
            trees.new[tid] = encoded
        return tid

    def _diff(
        self,
        old: TreeId | None,
        new: TreeId,
        rel: bytes,
        listings: dict[TreeId, list[Entry]],
        stats: _Stats,
    ) -> None:
        """Count files added, changed and removed; equal subtrees are skipped unread."""
        if old == new:
            return
        before = {e.name: e for e in self.vault.tree(old)} if old is not None else {}
        names = set()
        listing = listings.get(new)
        for e in listing if listing is not None else self.vault.tree(new):
            names.add(e.name)
            o = before.get(e.name)
            path = rel + b"/" + e.name if rel else e.name
            if o is not None and o.kind != e.kind:
                self._count_removed(o, path, stats)
                o = None
            if e.kind == "dir" and e.tree is not None:
                self._diff(o.tree if o is not None else None, e.tree, path, listings, stats)
            elif e.kind == "file":
                if o is None:
                    stats.added += 1
                elif o.blob != e.blob:
                    stats.changed += 1
                    stats.modified.append(path)
        for name, o in before.items():
            if name not in names:
                self._count_removed(o, rel + b"/" + name if rel else name, stats)

    def _count_removed(self, old: Entry, rel: bytes, stats: _Stats) -> None:
        if old.kind == "file":
            stats.removed += 1
            stats.deleted.append(rel)
        elif old.kind == "dir" and old.tree is not None:
            for e in self.vault.tree(old.tree):
                self._count_removed(e, rel + b"/" + e.name, stats)

    # ---- commit ------------------------------------------------------------------------

    def _finish_unchanged(self, latest: VersionInfo, trees: _Trees) -> None:
        """The root equals the latest version's: no new version. Content stored by this run
        (blobs that were lost and are healed now, `restored_lost`) is in closed bands that
        the uploader registers before the catalog commit below; `run` then publishes them
        to the consolidated index."""
        band = self._band
        if band is not None and band.uncompressed_size == 0:
            self._band = None
            band.abort()
            self._band_ids.pop()
        self._close_band(final_extra=None)  # new content no version needs yet (rare)
        self._uploader.stop(abort=False)
        verified = VersionInfo.from_json(
            {**latest.to_json(), "verified_ns": [*latest.verified_ns, self.now()]}
        )
        with self.vault.catalog.writer() as w:
            w.put_version(verified)
            self._write_files_cache(w, [], latest.root, trees)
        self.result.unchanged = True
        self.result.latest = verified
        self._collect_band_stats()

    def _commit(
        self,
        root_id: TreeId,
        latest: VersionInfo | None,
        trees: _Trees,
        stats: _Stats,
    ) -> None:
        self.progress.stage("committing")
        now = self.now()
        if self._band is None:
            self._open_band()  # a metadata-only band carries the trees and the record
        assert self._band is not None
        version = VersionInfo(
            collection=self.collection.name,
            number=(latest.number + 1) if latest else 1,
            created_ns=now,
            root=root_id,
            bands=tuple(self._band_ids),
            stats=ChangeStats(
                files=stats.files, bytes=stats.size, added=stats.added,
                changed=stats.changed, removed=stats.removed,
                bytes_added=self._bytes_added,
            ),
            previous_created_ns=latest.created_ns if latest else None,
            host=socket.gethostname(),
            root_meta=self._root_meta,
        )
        self._close_band(
            final_extra={
                "version": version.to_json(),
                "trees": {tid.hex(): to_text(enc) for tid, enc in trees.new.items()},
            }
        )
        self._uploader.stop(abort=False)
        testpoints.reach("before-commit")
        self.vault.commit_version(version)
        testpoints.reach("version-record-written")
        with self.vault.catalog.writer() as w:
            for tid, enc in trees.new.items():
                w.put_tree(tid, enc)
            w.put_version(version)
            self._write_files_cache(w, stats.deleted, root_id, trees)
        self.result.version = version
        self.result.latest = version
        if self.collection.tier == "cold" and latest is not None:
            self.result.modified = stats.modified
            self.result.deleted = stats.deleted
        limit = self.collection.max_removed
        if latest is not None and limit.exceeded(stats.removed, latest.stats.files):
            self.result.mass_removal = MassRemoval(
                stats.removed, latest.stats.files, latest.number, str(limit))
        self._collect_band_stats()

    def _write_files_cache(
        self, w: CatalogWriter, deleted: list[bytes], root: TreeId, trees: _Trees
    ) -> None:
        for rel, row in self._cache_rows:
            w.put_file(self.collection.name, rel, row)
        for rel in deleted:
            w.delete_file(self.collection.name, rel)
        if trees.reused != trees.dirs or not trees.memos.valid:  # some listing was encoded
            w.replace_dir_memos(self.collection.name, root, trees.memo_rows)

    def _collect_band_stats(self) -> None:
        self.result.bands = len(self._uploader.uploaded)
        self.result.bytes_stored = sum(b.size for b in self._uploader.uploaded)


class _Memos:
    """The directory memo rows of the collection, looked up during the scan."""

    def __init__(self, cache: FileCacheLookup, latest: VersionInfo | None) -> None:
        self._cache = cache
        self.found: dict[bytes, DirMemo] = {}
        # The rows describe the version whose root they name; once another version is the
        # latest (one adopted from the store after a crash), they describe nothing reliable.
        self.valid = latest is not None and cache.dir_memo_root() == latest.root

    def signature(self, rel: bytes) -> bytes | None:
        memo = self._cache.dir_memo(rel)
        if memo is None:
            return None
        self.found[rel] = memo
        return memo.signature


@dataclass(slots=True)
class _Trees:
    """What building the trees produces: new encodings, listings for the diff, memo rows."""

    memos: _Memos
    new: dict[TreeId, bytes] = field(default_factory=dict)  # not yet in the catalog
    listings: dict[TreeId, list[Entry]] = field(default_factory=dict)  # encoded in this run
    memo_rows: list[tuple[bytes, DirMemo]] = field(default_factory=list)
    dirs: int = 0  # directories built
    reused: int = 0  # of them, recorded trees taken over as they were (the rest: encoded)


@dataclass(slots=True)
class _Stats:
    files: int = 0
    size: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    modified: list[bytes] = field(default_factory=list)
    deleted: list[bytes] = field(default_factory=list)


def check_root(collection: CollectionConfig) -> None:
    """Refuse a root that is missing, not a directory, unreadable or empty (SourceRefused).

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
            f"snapshotted: mount it or fix [collections.{name}].path"
        ) from None
    except NotADirectoryError:
        raise SourceRefused(
            f"collection {name}: {path} is not a directory (is the volume mounted?); "
            f"nothing was snapshotted: fix [collections.{name}].path"
        ) from None
    except OSError as e:
        raise _unreadable_root(collection, e) from None
    if empty and not collection.allow_empty:
        raise SourceRefused(
            f"collection {name}: {path} is empty (is the volume mounted?); nothing was "
            f"snapshotted: mount it, or set allow_empty = true in [collections.{name}] "
            "if it is meant to be empty"
        )


def _unreadable_root(collection: CollectionConfig, e: OSError) -> SourceRefused:
    return SourceRefused(
        f"collection {collection.name}: cannot read {collection.path} ({e.strerror}); nothing "
        "was snapshotted: check that the volume is mounted and readable by this user"
    )


def _meta(f: ScannedFile) -> bandfmt.MemberMeta:
    st = f.st
    return bandfmt.MemberMeta(
        mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid,
        mtime_ns=st.st_mtime_ns, xattrs=f.xattrs,
    )


def _root_meta(root: bytes, top: ScannedDir) -> RootMeta:
    """The collection root's mode, owner, mtime and xattrs (of the directory a symlinked
    root points to: its own mode, not the link's 0777, is what guards the files)."""
    st = top.st if not stat.S_ISLNK(top.st.st_mode) else os.stat(root)
    return RootMeta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, top.xattrs)


def _file_entry(f: ScannedFile) -> Entry:
    st = f.st
    return Entry(
        name=f.name,
        kind="file",
        mode=st.st_mode & 0o7777,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=st.st_size,
        blob=f.blob,
        nlink=st.st_nlink,
        hardlink=f.link_of.rel if f.link_of is not None else None,
        xattrs=f.xattrs,
    )


def _dir_entry(d: ScannedDir, sub: TreeId) -> Entry:
    st = d.st
    return Entry(
        name=d.name, kind="dir", mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid,
        mtime_ns=st.st_mtime_ns, tree=sub, xattrs=d.xattrs,
    )


class _ReadAhead:
    """Which files of the read list are taken, and the small files read ahead of the main
    loop (in list order, so a directory's small files stay together in the band)."""

    def __init__(self, root: bytes, files: list[ScannedFile]) -> None:
        self.root, self.files = root, files
        self.taken = bytearray(len(files))
        self.cursor = 0  # files before this were taken or are too large to read ahead
        self.done: list[tuple[ScannedFile, tuple[memoryview, BlobId] | None]] = []
        self.pending_bytes = 0

    def take(self, i: int) -> bool:
        """Claim file `i` for the main loop; False if it was read ahead."""
        if self.taken[i]:
            return False
        self.taken[i] = 1
        return True

    def next_small(self) -> int | None:
        """Claim the next small file not taken yet, within the memory bound."""
        if self.pending_bytes >= READ_AHEAD_BYTES:
            return None
        files, taken, i = self.files, self.taken, self.cursor
        while i < len(files) and (taken[i] or files[i].st.st_size > READ_AHEAD_FILE):
            i += 1
        if i >= len(files):
            self.cursor = len(files)
            return None
        self.cursor = i + 1
        taken[i] = 1
        return i
