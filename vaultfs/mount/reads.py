"""How the mount reads file content: verified ranged reads from bands (no FUSE here).

* `OpenFile` — one open file: ranged reads of its blob. Every byte returned has
  passed its zstd frame's checksum; a file read sequentially from offset 0 is also
  hashed (SHA-256, on the hasher thread) and the read that ends it fails unless the
  hash matches the blob id.
* `BandReaders` — a bounded LRU of band readers (`Vault.band_reader`), reads split
  at frame boundaries, the read-ahead threads that decompress the next frames of a
  sequential reader, the hasher thread, and `demote` (a band found less available
  than the catalog said).

Kept apart from the view (`vaultfs.mount.view`, which hands out `OpenFile`s from
`open`) because this is the part that runs in worker threads and owns threads: the
view's listings run on the event loop only.

Memory bound: at most `READERS` band readers, each with a frame cache of
max(`FRAME_CACHE_BYTES`, 2 x its largest frame) that also receives the frames
prefetched for sequential readers (2 prefetch threads, one frame each in flight),
plus at most `HASH_BACKLOG` served bytes per open file waiting for the hasher and as
many held back because they arrived ahead of it (`OpenFile`).
A read inside one frame returns a view of the cached frame (no copy): that frame
stays alive until the kernel has taken the reply.

Band states (`vaultfs.archive`): a read that finds the band archived after all (a
restore that expired unnoticed) raises `Archived`; `BandReaders.invalidate` drops
a band's reader when its state changes (restored → cached: read the local copy
from then on).

Concurrency: `OpenFile.read` is blocking and thread-safe (called from worker
threads); `OpenFile.peek` never blocks (the event loop may call it). The band
reader LRU and the per-handle hash state have their own locks.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from vaultfs import band as bandfmt
from vaultfs import testpoints
from vaultfs.errors import CorruptionError
from vaultfs.model import BandId, BandInfo, BandState, BlobId, BlobRef
from vaultfs.mount.errors import Archived
from vaultfs.sparse import Extents, data_size, pieces
from vaultfs.store.base import ObjectArchived
from vaultfs.vault import Vault

log = logging.getLogger("vaultfs.mount")

FRAME_CACHE_BYTES = 16 * 1024 * 1024
READ_AHEAD_FRAMES = 2  # a sequential reader has this many frames decompressed ahead
HASH_BACKLOG = 8 * 1024 * 1024  # served bytes of one open file waiting for the hasher
READERS = 4


class OpenFile:
    """An open file: ranged reads of its blob. Thread-safe; `read` blocks (run it in a thread),
    `peek` does not (an event loop may call it).

    Every byte returned has passed its zstd frame's checksum. While a file is read
    sequentially from offset 0, its SHA-256 is also computed over exactly the bytes
    returned, and the read that completes it fails with CorruptionError unless it
    matches the blob id; once it matched, `verified` is true (the mount then lets the
    kernel keep the file's pages, docs/mount.md). The kernel's read-ahead sends several
    reads at once and they may finish in any order: a read just ahead of the hash is
    held (at most HASH_BACKLOG bytes) until the reads before it arrive. Three things
    overlap for a sequential reader: the band's next frame is decompressed in the
    background (`BandReaders.read` with ``until``), the bytes already returned are hashed
    by the hasher thread (in order: it is one thread), and the current frame is served,
    straight from the event loop when it is cached.
    At most HASH_BACKLOG bytes wait for the hasher (they pin their frames in memory).
    """

    def __init__(
        self,
        readers: BandReaders,
        ref: BlobRef | None,
        blob: BlobId,
        size: int,
        fault: bool = False,
        sparse: Extents | None = None,
    ) -> None:
        self.readers, self.ref, self.blob = readers, ref, blob
        self.file_size = size
        self.sparse = sparse  # a sparse file's data map: reads go through it, holes are zeros
        self.size = size if sparse is None else data_size(sparse)  # the blob's
        self._fault = fault
        self._lock = threading.Lock()
        self._hash: hashlib._Hash | None = hashlib.sha256()
        self._hashed = 0  # bytes handed to the hasher (from offset 0, in order)
        self._backlog: deque[tuple[Future[None], int]] = deque()  # hasher jobs not done
        self._backlog_bytes = 0
        # Reads that arrived ahead of `_hashed` (the kernel's read-ahead sends several at
        # once and worker threads finish them in any order): offset → bytes, at most
        # HASH_BACKLOG bytes, handed to the hasher once the gap before them is filled.
        self._ahead: dict[int, bytes | memoryview] = {}
        self._ahead_bytes = 0
        self.verified = False  # every byte from 0 to the end was hashed and matched the blob id
        self._failed: str | None = None  # why the file failed its SHA-256: every read fails now

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.read_view(offset, length))

    def read_view(self, offset: int, length: int) -> bytes | memoryview:
        """Like `read`; a range inside one frame comes back as a view of the frame (no copy).
        A sparse file's range is read piece by piece through its data map: holes are zeros
        and touch no band, data comes from the blob (still hashed when read in order)."""
        if self._fault:
            raise testpoints.InjectedFault("injected fault at read (VAULTFS_TESTPOINTS)")
        if self._failed is not None:  # bytes known not to be the file's: none of them again
            raise CorruptionError(self._failed)
        if self.sparse is None:
            return self._blob_view(offset, length)
        length = max(0, min(length, self.file_size - offset))
        layout = pieces(self.sparse, offset, length)
        parts = [bytes(n) if at is None else self._blob_view(at, n) for n, at in layout]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _blob_view(self, offset: int, length: int) -> bytes | memoryview:
        length = max(0, min(length, self.size - offset))
        if length == 0 or self.ref is None:
            return b""
        # in order, or just ahead (the kernel's read-ahead): decompress the next frames too
        sequential = self._hash is not None and self._hashed <= offset <= self._hashed + HASH_BACKLOG
        until = self.ref.offset + self.size if sequential else 0
        data = self.readers.read(self.ref.band, self.ref.offset + offset, length, until)
        if len(data) != length:
            raise CorruptionError(f"band {self.ref.band}: short read of blob {self.blob.hex()}")
        self._verify(offset, data)
        return data

    def peek(self, offset: int, length: int) -> memoryview | None:
        """`read_view` when it needs no waiting: the bytes are in a cached frame, this read
        does not end the file (that one waits for the hash) and the hasher is not too far
        behind. Else None: call `read_view` in a thread."""
        if self._fault or self._failed is not None:
            return None
        if self.sparse is not None:
            length = max(0, min(length, self.file_size - offset))
            parts = list(pieces(self.sparse, offset, length))
            if all(at is None for _, at in parts):
                return memoryview(bytes(length))  # only holes
            if len(parts) != 1:
                return None
            length, offset = parts[0][0], parts[0][1] or 0
        return self._blob_peek(offset, length)

    def _blob_peek(self, offset: int, length: int) -> memoryview | None:
        if self.ref is None:
            return None
        length = min(length, self.size - offset)
        if length <= 0 or offset + length == self.size:
            return None
        with self._lock:
            if self._hash is not None and (
                offset != self._hashed or self._ahead or self._backlog_bytes >= HASH_BACKLOG
            ):
                # not in order (read_view decides), a read that may end the hash (it waits
                # for it: reads ahead are held), or let the hasher catch up
                return None
        data = self.readers.peek(self.ref.band, self.ref.offset + offset, length, self.ref.offset + self.size)
        if data is not None:
            self._verify(offset, data, wait=False)
        return data

    def _verify(self, offset: int, data: bytes | memoryview, *, wait: bool = True) -> None:
        with self._lock:
            if self._hash is None:
                return
            if offset != self._hashed:
                self._hold(offset, data)  # ahead: hashed once the gap is filled
                return
            self._hash_in_order(data)
            while self._hashed in self._ahead:  # the reads that were waiting for this one
                held = self._ahead.pop(self._hashed)
                self._ahead_bytes -= len(held)
                self._hash_in_order(held)
            done = self._hashed == self.size
            while self._backlog and (
                self._backlog[0][0].done() or (wait and (done or self._backlog_bytes > HASH_BACKLOG))
            ):
                oldest, n = self._backlog.popleft()
                oldest.result()  # waits only when the file ends or the backlog is full
                self._backlog_bytes -= n
            if done:
                if self._hash.digest() != self.blob:
                    assert self.ref is not None
                    self._failed = (
                        f"band {self.ref.band}: blob {self.blob.hex()} at {self.ref.offset} fails SHA-256"
                    )
                    raise CorruptionError(self._failed)
                self.verified = True

    def _hold(self, offset: int, data: bytes | memoryview) -> None:
        """A read ahead of the hash: keep it for later, or give up on the hash (the frame
        checksums alone vouch for the bytes) when it overlaps what was hashed or too much
        is waiting. Called with the lock held."""
        if offset < self._hashed or offset in self._ahead or self._ahead_bytes + len(data) > HASH_BACKLOG:
            self._hash = None
            self._backlog.clear()
            self._ahead.clear()
            self._ahead_bytes = 0
            return
        self._ahead[offset] = data
        self._ahead_bytes += len(data)

    def _hash_in_order(self, data: bytes | memoryview) -> None:
        """Hand the bytes at `_hashed` to the hasher thread. Called with the lock held."""
        assert self._hash is not None
        job = self.readers.hasher.submit(self._hash.update, data)
        self._backlog.append((job, len(data)))
        self._backlog_bytes += len(data)
        self._hashed += len(data)


class BandReaders:
    """A bounded LRU of labelled band readers; reads split at frame boundaries.

    Splitting means a read decompresses (or finds in the reader's frame cache)
    whole frames but copies only the bytes asked for, so 1 MiB reads of a band
    with 8 MiB frames cost one decompression per frame, not one per read.
    """

    def __init__(self, vault: Vault, limit: int = READERS) -> None:
        self.vault = vault
        self.limit = limit
        self._lock = threading.Lock()
        self._readers: OrderedDict[BandId, bandfmt.BandReader] = OrderedDict()
        # Decompresses frames ahead of sequential readers (every reader's `prefetch`);
        # its threads are ours: `close` stops them.
        self.read_ahead = bandfmt.ReadAhead()
        # The one thread that hashes what sequential readers were served, in order
        # (`OpenFile`); ours too.
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaultfs-hash")

    def close(self) -> None:
        """Stop the read-ahead and hasher threads (after finishing what they were given)."""
        self.read_ahead.close()
        self.hasher.shutdown(wait=True)

    def invalidate(self, band: BandId) -> None:
        """Forget the band's reader: its state changed (cached: read the local copy now)."""
        with self._lock:
            self._readers.pop(band, None)

    def get(self, band: BandId) -> bandfmt.BandReader:
        with self._lock:
            reader = self._readers.get(band)
            if reader is not None:
                self._readers.move_to_end(band)
                return reader
        reader = self.vault.band_reader(band, cache_bytes=FRAME_CACHE_BYTES)
        with self._lock:
            reader = self._readers.setdefault(band, reader)
            while len(self._readers) > self.limit:
                self._readers.popitem(last=False)
        return reader

    def peek(self, band: BandId, offset: int, length: int, until: int) -> memoryview | None:
        """`read` of a range in one frame that is decompressed already, else None; never
        blocks. Starts decompressing the next frame, like `read` with ``until``."""
        with self._lock:
            reader = self._readers.get(band)
        if reader is None:
            return None
        data = reader.peek_view(offset, length)
        if data is not None:
            _read_ahead(reader, self.read_ahead, offset, until)
        return data

    def read(self, band: BandId, offset: int, length: int, until: int = 0) -> bytes | memoryview:
        """Bytes [offset, offset+length) of the band's tar stream, frame-checksum verified.

        A sequential reader passes `until`, the end of what it will read: the
        READ_AHEAD_FRAMES frames after the last one this read touches are then
        decompressed in the background (`BandReader.prefetch`) if they begin before `until`.
        Archived (ENODATA) if S3 says the band is archived after all (a restore that
        expired unnoticed): the catalog then says so too, and the next open restores it.
        """
        try:
            return self._read(band, offset, length, until)
        except ObjectArchived:
            info = self.vault.catalog.band(band)
            if info is not None and info.state != "archived":
                self.demote(
                    info,
                    "archived",
                    "S3 says it is archived (its restore expired); opening a file of it restores it again",
                )
            else:
                self.invalidate(band)
            raise Archived(band, "archived") from None

    def demote(self, info: BandInfo, state: BandState, why: str) -> BandInfo:
        """The band is less available than the catalog said: record `state` (not cached),
        forget its reader, say why in the log."""
        new = replace(info, state=state, cached=False)
        with self.vault.catalog.writer() as w:
            w.put_band(new)
        self.invalidate(info.band)
        log.warning("band %s: %s; it is %s now", info.band, why, state)
        return new

    def _read(self, band: BandId, offset: int, length: int, until: int) -> bytes | memoryview:
        reader = self.get(band)
        frames = reader.frames
        i = reader.frame_index(offset)
        if until:  # this read's frames first, then the next: the pool decompresses both
            _read_ahead(reader, self.read_ahead, offset, until, first=i)
        pieces: list[bytes | memoryview] = []
        pos, end = offset, offset + length
        while pos < end and i < len(frames):
            f = frames[i]
            stop = min(end, f.uncompressed_offset + f.uncompressed_size)
            if stop > pos:
                pieces.append(reader.read_view(pos, stop - pos))
                pos = stop
            i += 1
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _read_ahead(
    reader: bandfmt.BandReader,
    read_ahead: bandfmt.ReadAhead,
    offset: int,
    until: int,
    first: int | None = None,
) -> None:
    """Prefetch READ_AHEAD_FRAMES frames after the one holding byte `offset` (and from
    frame `first` on, if given) that begin before `until`."""
    frames = reader.frames
    after = reader.frame_index(offset) + 1
    for i in range(after if first is None else first, min(after + READ_AHEAD_FRAMES, len(frames))):
        if frames[i].uncompressed_offset >= until:
            break
        reader.prefetch(i, read_ahead)
