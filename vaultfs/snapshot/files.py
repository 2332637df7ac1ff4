"""The file saver: read the files the scan found changed, hash them, pack new content into bands.

`FileSaver` owns the band being filled: it opens a band when content needs one, closes
it at ``band_size`` and hands it to the uploader (`spool.Uploader`, owned by the
`Snapshot`). Per file: open it and check it is the file the scan saw, read it (a small
file in one read that serves hash and band; a large one streamed), dedup it against
every blob of the vault and of this run, and pack it when it is new. Two shortcuts for
large files (`_likely_known`, `probable_copy`) hash before packing when the content is
probably stored already. While zstd is behind on a large file, the band writer's stall
hook reads the next small files ahead (`_ReadAhead`).

The small-file path (`_read_one` → `_pack_small` → `_file_read`) is the hot path of a
first snapshot: it is kept free of extra calls and allocations per file.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

from vaultfs import band as bandfmt
from vaultfs import testpoints
from vaultfs.catalog import FileCacheLookup, FileCacheRow
from vaultfs.config import AUTO, CollectionConfig, Config, Level
from vaultfs.model import BandId, BlobId, TreeId
from vaultfs.snapshot.autolevel import AutoLevel
from vaultfs.snapshot.previews import PreviewSpool, keeps_previews, pread_of
from vaultfs.snapshot.spool import Uploader
from vaultfs.source import (
    ChangedWhileReading,
    FileStat,
    NotRegularFile,
    Problem,
    ScannedFile,
    data_map,
    has_holes,
    hash_stream,
    open_source,
    read_extents_into,
    read_into,
    read_small,
    same_file_state,
)
from vaultfs.sparse import data_size
from vaultfs.store.limit import shared
from vaultfs.vault import Vault
from vaultfs.walk import walk

SMALL_FILE = 1024 * 1024  # read whole into memory: one read serves hash and band
FINGERPRINT_PIECE = 64 * 1024  # `probable_copy`: bytes hashed from each end of a large file
READ_AHEAD_FILE = 256 * 1024  # files read ahead while zstd catches up (per-file cost dominates)
READ_AHEAD_BYTES = 4 * 1024 * 1024  # at most this much read ahead at a time
READ_LATER = (memoryview(b""), BlobId(b""))  # a file read ahead turned out large: read it later
CHANGED = "changed while it was read; back it up again when it is quiet"
WARM_FRAME_SIZE = 1024 * 1024  # measured against other sizes: docs/benchmarks.md, "Warm frames"
# Warm data is snapshotted often and is small: speed over ratio (level 1 took 0.72x the time
# of level 3 for 12 % more bytes; docs/benchmarks.md, "The warm tier").
WARM_LEVEL = 1


class ReadProgress(Protocol):
    """What the file saver reports: the files to read, then each file read."""

    def reading(self, files_total: int, bytes_total: int) -> None: ...
    def advance(self, files: int, size: int) -> None: ...


def band_settings(config: Config, collection: CollectionConfig) -> tuple[int, int, bool]:
    """The frame size, zstd level and frame-cut policy of `collection`'s bands: the tier's
    default frame size unless the collection sets one; the collection's level, else the
    vault's, else the tier's (cold: "auto", warm: `WARM_LEVEL`) — for "auto" the level
    given is ``auto_min``, where `auto_levels` starts; ``whole_members`` for warm bands,
    whose files are read one at a time (restore fetch, cat in the mount), so a small one
    never straddles two frames (cold bands are read whole once restored)."""
    cold = collection.tier == "cold"
    frame_size = collection.frame_size or (bandfmt.FRAME_SIZE_DEFAULT if cold else WARM_FRAME_SIZE)
    level = _level(config, collection)
    return frame_size, config.auto_min if level == AUTO else level, not cold


LIMITED_BAND_SECONDS = 30  # "auto" behind an upload limit: a band is what the link sends in this
FIRST_BAND_SECONDS = 5  # ... and the first band of a run this: the link starts at once
MIN_LIMITED_BAND = 16 * 1024 * 1024


def limited_band_size(band_size: int, rate: int, *, first: bool) -> int:
    """The size at which a band is closed when "auto" runs behind an upload limit of `rate`
    bytes per second: what the link sends in `LIMITED_BAND_SECONDS` (`FIRST_BAND_SECONDS`
    for the run's first band), at least `MIN_LIMITED_BAND`, at most `band_size`.

    The uploader sends closed bands only: a band of `band_size` (1 GiB) behind a slow
    link is filled long before it is sent, so the whole of a small backup sits compressed
    at the lowest level before the level could rise, and the link idles until the first
    band is closed (docs/snapshots.md, "The compression level auto")."""
    seconds = FIRST_BAND_SECONDS if first else LIMITED_BAND_SECONDS
    return min(band_size, max(MIN_LIMITED_BAND, rate * seconds))


def auto_levels(config: Config, collection: CollectionConfig) -> tuple[int, int] | None:
    """(``auto_min``, ``auto_max``) when `collection`'s level is "auto", else None."""
    return (config.auto_min, config.auto_max) if _level(config, collection) == AUTO else None


def _level(config: Config, collection: CollectionConfig) -> Level:
    for level in (collection.compression_level, config.compression_level):
        if level is not None:
            return level
    return AUTO if collection.tier == "cold" else WARM_LEVEL


class FileSaver:
    """Reads, dedups and packs the files of one snapshot; owns the band being filled."""

    def __init__(
        self, vault: Vault, collection: CollectionConfig, uploader: Uploader, progress: ReadProgress
    ) -> None:
        self.vault = vault
        self.collection = collection.name
        self.progress = progress
        self.uploader = uploader
        self.frame_size, self.level, self.whole_members = band_settings(vault.config, collection)
        self.band: bandfmt.BandWriter | None = None
        bounds = auto_levels(vault.config, collection)
        # "auto" behind an upload limit: bands cut to the link (`limited_band_size`), and the
        # limit is the link's rate until the first band has been sent
        self.upload_rate = (
            None
            if bounds is None
            else shared(vault.config.upload_limit, vault.config.download_limit).up.rate()
        )
        self.band_size = self.full_band_size = vault.config.band_size
        self.auto = (
            None
            if bounds is None
            else AutoLevel(*bounds, vault.config.threads, self._backlog, self._link_rate)
        )
        self.band_ids: list[BandId] = []  # every band this run opened, in order
        self.cache_rows: list[tuple[bytes, FileCacheRow]] = []  # files read: their new rows
        self.bytes_added = 0  # content of the blobs this run stored
        self.files_read = 0
        self.bytes_read = 0
        self.lost: set[BlobId] = set()  # blobs known lost when the run began (`vaultfs.heal`)
        self.restored_lost = 0  # files read whose blob was lost: stored again, which heals it
        self.problems: list[Problem] = []  # files skipped (the scan's list, once reading starts)
        self._new_blobs: set[BlobId] = set()
        self._large_files: set[tuple[int, int]] | None = None
        self._fingerprints: set[tuple[int, bytes]] = set()  # large files read in this run
        self._known: FileCacheLookup | None = None  # the catalog's blobs, while files are read
        self._member_prefix = self.collection.encode() + b"/"  # band members: <collection>/<path>
        self._ahead = _ReadAhead(b"", [])
        # Cold collections on an archiving store: each band's preview ranges (snapshot/previews.py).
        self.previews = (
            PreviewSpool(vault, collection.preview_head, collection.preview_small_files)
            if keeps_previews(vault.config, collection)
            else None
        )

    # ---- the read loop -----------------------------------------------------------------

    def read_files(
        self, root: bytes, files: list[ScannedFile], cache: FileCacheLookup, problems: list[Problem]
    ) -> None:
        """Read every file whose files-cache row does not match its stat data; files that
        match keep their recorded blob. Skipped files are appended to `problems`."""
        self.problems = problems
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
                if len(row) == 7:  # a sparse file: its data map
                    f.sparse = row[6]
            else:
                to_read.append(f)
        self.progress.reading(len(to_read), sum(f.st.st_size for f in to_read))
        self.cache_rows = []
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
                f.blob, f.sparse = f.link_of.blob, f.link_of.sparse
                f.skipped = f.link_of.skipped
        # The band being filled stays open: the commit closes it with the new trees
        # and the version record in its catalog (docs/band-format.md), so a small snapshot
        # writes one band, not a data band and a metadata band.
        self.uploader.drain()

    def _read_one(self, root: bytes, f: ScannedFile) -> None:
        opened = self._open(root, f)
        if opened is None:
            return None
        fd, before = opened
        try:
            # Fewer blocks than bytes: maybe holes (one comparison: the small-file hot path).
            if has_holes(before) and self._sparse(f, fd, before):
                assert f.sparse is not None
                extents = f.sparse
                blob = self._pack_large(f, fd, before, data_size(extents), read_extents_into(fd, extents))
            elif before.st_size <= SMALL_FILE:
                data, blob = read_small(fd, before)
                self._pack_small(f, data, blob)
                return None
            elif self._likely_known(before) or self.probable_copy(fd, before):
                blob = self._hash_then_pack(f, fd, before)
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

    def _sparse(self, f: ScannedFile, fd: int, before: os.stat_result) -> bool:
        """Whether the file has holes; if so its data map goes into `f.sparse`: only the
        data extents are read, hashed and stored (docs/snapshots.md#sparse-files)."""
        f.sparse = data_map(fd, before.st_size)
        return f.sparse is not None

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
            assert self.band is not None
            self.band.add_blob(self._member_prefix + f.rel, _meta(f), data, blob)
            if self.previews is not None:
                self.previews.add(blob, len(data), data, None)
            self._blob_added(blob, len(data))
        self._file_read(f, blob)

    def _file_read(self, f: ScannedFile, blob: BlobId) -> None:
        f.blob = blob
        st = f.st
        self.files_read += 1
        if blob in self.lost:  # stored again by this run (`_is_new`): the blob is healed
            self.restored_lost += 1
        self.bytes_read += st.st_size if f.sparse is None else data_size(f.sparse)
        self.cache_rows.append(
            (
                f.rel,
                FileCacheRow(
                    st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, blob, f.sparse
                ),
            )
        )

    def _skip(self, f: ScannedFile, reason: str) -> None:
        f.skipped = True
        self.problems.append(Problem(f.rel, reason))

    # ---- reading ahead -----------------------------------------------------------------

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
            # grew, or may have holes: read it with the main loop's rules
            if before.st_size > READ_AHEAD_FILE or has_holes(before):
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

    # ---- large files -------------------------------------------------------------------

    def _hash_then_pack(self, f: ScannedFile, fd: int, before: os.stat_result) -> BlobId:
        """A large file whose content is probably stored: hash first, pack only if new."""
        blob = hash_stream(fd, before)
        testpoints.reach("after-hash")
        if self._is_new(blob):
            self._make_room(before.st_size)
            assert self.band is not None
            self.band.add_blob_stream(
                self._member_prefix + f.rel,
                _meta(f),
                before.st_size,
                read_into(fd),
                blob,
                skip_if=lambda _: _changed_since(fd, before),
            )
            self._keep_preview(blob, fd, before)
            self._blob_added(blob, before.st_size)
        return blob

    def _pack_large(
        self,
        f: ScannedFile,
        fd: int,
        before: os.stat_result,
        size: int | None = None,
        read: bandfmt.ReadInto | None = None,
    ) -> BlobId:
        """One read that hashes and packs; rolled back if the vault already has the blob.
        A sparse file passes its blob's `size` and a `read` of its data extents."""
        size = before.st_size if size is None else size
        self._make_room(size)
        assert self.band is not None
        digests: list[BlobId] = []

        def known(digest: bytes) -> bool:
            testpoints.reach("after-hash")
            _changed_since(fd, before)
            digests.append(BlobId(digest))
            return not self._is_new(BlobId(digest))

        loc = self.band.add_blob_stream(
            self._member_prefix + f.rel,
            _meta(f),
            size,
            read_into(fd) if read is None else read,
            skip_if=known,
        )
        if loc is not None:
            if read is None:  # not a sparse file (disk images get no previews)
                self._keep_preview(digests[0], fd, before)
            self._blob_added(digests[0], size)
        return digests[0]

    def _keep_preview(self, blob: BlobId, fd: int, before: os.stat_result) -> None:
        """A large file's preview ranges, read with a few preads; kept only if the file is
        still as it was opened (so they are the bytes just packed). The blob is in the band
        already: a read error here costs its previews, never the file."""
        if self.previews is None:
            return
        try:
            head = os.pread(fd, max(self.previews.head_limit, FINGERPRINT_PIECE), 0)
        except OSError:
            return
        self.previews.add(
            blob, before.st_size, head, pread_of(fd), lambda: same_file_state(before, os.fstat(fd))
        )

    def _likely_known(self, st: os.stat_result) -> bool:
        """Whether a large file probably has content the vault already holds.

        True when the latest version has a large file of the same size and mtime
        (a file moved or renamed: the files cache, keyed by path, missed it).
        Such files are hashed before they are packed, so a reorganised photo
        library costs a hash pass, not a compression pass.
        """
        if self._large_files is None:
            self._large_files = set()
            latest = self.vault.catalog.latest_version(self.collection)
            if latest is not None:
                self._collect_large(latest.root, self._large_files)
        return (st.st_size, st.st_mtime_ns) in self._large_files

    def probable_copy(self, fd: int, st: os.stat_result) -> bool:
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
        out.update(
            (e.size, e.mtime_ns)
            for _, e in walk(self.vault.tree, tree)
            if e.kind == "file" and e.size > SMALL_FILE
        )

    # ---- content from elsewhere (a hub's client) --------------------------------------

    def pack_received(
        self, rel: bytes, meta: bandfmt.MemberMeta, size: int, read: bandfmt.ReadInto, blob: BlobId
    ) -> None:
        """Pack `size` bytes that `read` delivers from elsewhere — a hub's client
        (`vaultfs.hub.server`) — under the claim that their SHA-256 is `blob`. The hash is
        recomputed here, while packing: a mismatch (or too few bytes) rolls the member back
        and raises `bandfmt.ContentChanged`, and the caller aborts the snapshot. A small
        blob is gathered whole and packed as a small file is (no frame of its own). Of a
        cold collection's previews only the head is kept (the stream is read once)."""
        self._make_room(size)
        assert self.band is not None
        if size <= SMALL_FILE:
            view, n = memoryview(bytearray(size)), 0
            while n < size and (got := read(view[n:], n)):
                n += got
            if n != size or hashlib.sha256(view).digest() != blob:
                raise bandfmt.ContentChanged
            self.band.add_blob(self._member_prefix + rel, meta, view, blob)
            if self.previews is not None:
                self.previews.add(blob, size, view, None)
        else:
            head = bytearray()  # a stream cannot be read again: its head is kept as it passes
            limit = self.previews.head_limit if self.previews is not None else 0

            def read_keeping_head(into: memoryview, offset: int) -> int:
                got = read(into, offset)
                if offset == len(head) < limit:
                    head.extend(into[: min(got, limit - offset)])
                return got

            self.band.add_blob_stream(self._member_prefix + rel, meta, size, read_keeping_head, blob)
            if self.previews is not None:  # the head only: other ranges would need reads
                self.previews.add(blob, size, bytes(head), None)
        self.files_read += 1
        self.bytes_read += size
        self._blob_added(blob, size)

    # ---- blobs and bands ---------------------------------------------------------------

    def _is_new(self, blob: BlobId) -> bool:
        assert self._known is not None, "only while files are read"
        return blob not in self._new_blobs and not self._known.has_blob(blob)

    def _blob_added(self, blob: BlobId, size: int) -> None:
        self._new_blobs.add(blob)
        self.bytes_added += size
        if self.band is not None and self.band.uncompressed_size >= self.band_size:
            self.close_band(final_extra=None)

    def _make_room(self, size: int) -> None:
        """Close the current band first if this file would push it past band_size."""
        band = self.band
        if (
            band is not None
            and band.uncompressed_size > 0
            and (band.uncompressed_size + size > self.band_size)
        ):
            self.close_band(final_extra=None)
        if self.band is None:
            self.open_band()

    def open_band(self) -> bandfmt.BandWriter:
        band_id = bandfmt.new_band_id()
        path = self.vault.spool_dir / f"{band_id}.tar.zst.part"
        self.band = bandfmt.BandWriter(
            path,
            band_id,
            level=self.level,
            frame_size=self.frame_size,
            threads=self.vault.config.threads,
            whole_members=self.whole_members,
        )
        self.band.on_stall = self._read_ahead
        if self.auto is not None:
            self.band.auto = self.auto
        if self.upload_rate is not None:
            self.band_size = limited_band_size(self.full_band_size, self.upload_rate, first=not self.band_ids)
        self.band_ids.append(BandId(band_id))
        if self.previews is not None:
            self.previews.open_band(band_id)
        return self.band

    def _link_rate(self) -> float | None:
        """The link's rate for "auto": measured once a band was sent, until then the limit."""
        measured = self.uploader.link_rate()
        return measured if measured is not None else self.upload_rate

    def _backlog(self) -> float:
        """Bands in the spool not yet sent, the one being filled counted by how much of it is
        compressed and written: the "auto" level's signal."""
        band = self.band
        filling = band.uncompressed_written / self.band_size if band is not None else 0.0
        return self.uploader.unsent_bands() + filling

    def close_band(self, final_extra: dict[str, object] | None) -> bandfmt.ClosedBand | None:
        """Close the band being filled (if any) and queue it for the uploader; the last band
        of a version carries `final_extra` (the version record, the new trees)."""
        band = self.band
        if band is None:
            return None
        self.band = None
        extra: dict[str, object] = {"collection": self.collection}
        if final_extra:
            extra.update(final_extra)
        # The uploader makes the band durable and gives it its final name: flushing
        # a 1 GiB band to disk then overlaps with packing the next one.
        band.on_stall = None  # files read ahead now would wait for the next loop turn
        closed = band.close(extra, sync=False)
        if self.previews is not None:
            self.previews.close_band()
        self.uploader.put(closed)
        return closed

    def drop_empty_band(self) -> None:
        """Forget the band being filled if nothing went into it (no version will name it)."""
        band = self.band
        if band is not None and band.uncompressed_size == 0:
            self.band = None
            band.abort()
            self.band_ids.pop()
            if self.previews is not None:
                self.previews.abort()

    def abort(self) -> None:
        """After a failure: delete the band being filled (its writer's threads stop with it)."""
        if self.band is not None:
            self.band.abort()
        if self.previews is not None:
            self.previews.abort()


def _changed_since(fd: int, before: os.stat_result) -> bool:
    """Raise ChangedWhileReading if the open file moved since ``before``; else False."""
    if not same_file_state(before, os.fstat(fd)):
        raise ChangedWhileReading
    return False


def _meta(f: ScannedFile) -> bandfmt.MemberMeta:
    st = f.st
    return bandfmt.MemberMeta(
        mode=st.st_mode & 0o7777,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        xattrs=f.xattrs,
        sparse=None if f.sparse is None else (st.st_size, f.sparse),
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
