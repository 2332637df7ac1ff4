"""Previews of archived files: reads served from a band's preview object (no FUSE here).

A file whose band is archived (or restoring) but that has preview ranges
(`vaultfs.snapshot.previews`, `vaultfs.band.preview`) opens anyway: `PreviewFile` answers
reads that start inside a kept range (up to that range's end: a short read, as POSIX
allows) and raises `Archived` for a read that starts in cold bytes, which the caller
turns into ENODATA and, guards permitting, the band's restore (docs/mount.md, "Previews
of archived files").

Where the bytes come from: the store, never a local copy. `Previews` fetches a band's
index once (a HEAD and a ranged GET of the object's tail) and keeps it in a bounded LRU
(`INDEXES` bands, a band without a preview object remembered as such); each range is
fetched with one ranged GET when first read, checked against its SHA-256 and kept in
an LRU of `RANGE_CACHE_BYTES`. So every byte served was verified, memory is bounded,
and nothing is written to the NAS.

Concurrency: `Previews.open` and `PreviewFile.read_view` block (store calls): worker
threads only. The LRUs have one lock; two threads may fetch the same range at once
(both verify it, one copy is kept).
"""

from __future__ import annotations

import hashlib
import threading
from bisect import bisect_right
from collections import OrderedDict

from vaultfs.band.preview import TRAILER, PreviewRange, parse_index, parse_trailer
from vaultfs.errors import CorruptionError
from vaultfs.keys import preview_key
from vaultfs.model import BandId, BlobId
from vaultfs.mount.askers import Opener
from vaultfs.mount.errors import Archived
from vaultfs.store import ObjectNotFound, ObjectStore

INDEXES = 64  # band indexes kept
RANGE_CACHE_BYTES = 32 * 1024 * 1024
TAIL_READ = 64 * 1024  # one GET of the object's tail usually holds the whole index

_Index = dict[bytes, tuple[PreviewRange, ...]]


class Previews:
    """The preview objects of the mount's bands: indexes and verified ranges, bounded."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._indexes: OrderedDict[BandId, _Index | None] = OrderedDict()
        self._ranges: OrderedDict[tuple[BandId, int], bytes] = OrderedDict()
        self._range_bytes = 0

    def open(self, band: BandId, blob: BlobId, size: int, state: str, opener: Opener) -> PreviewFile | None:
        """Blocking: a handle serving the kept ranges of `blob` (a file of `size` bytes in
        the unreadable `band`), or None when it has none (the open answers ENODATA as before)."""
        index = self._index(band)
        ranges = index.get(blob) if index is not None else None
        if not ranges:
            return None
        return PreviewFile(self, band, blob, size, ranges, state, opener)

    def _index(self, band: BandId) -> _Index | None:
        with self._lock:
            if band in self._indexes:
                self._indexes.move_to_end(band)
                return self._indexes[band]
        key = preview_key(band)
        try:
            size = self.store.head(key).size
            tail = self.store.get_range(key, max(0, size - TAIL_READ), min(size, TAIL_READ))
            length, digest = parse_trailer(tail, size, band)
            end = size - TRAILER.size
            if length + TRAILER.size <= len(tail):
                raw = tail[len(tail) - TRAILER.size - length : len(tail) - TRAILER.size]
            else:
                raw = self.store.get_range(key, end - length, length)
            index: _Index | None = parse_index(raw, digest, end - length, band)
        except ObjectNotFound:
            index = None  # a band written before previews, or of a collection without them
        with self._lock:
            self._indexes[band] = index
            while len(self._indexes) > INDEXES:
                self._indexes.popitem(last=False)
        return index

    def range_bytes(self, band: BandId, r: PreviewRange) -> bytes:
        """Blocking: the verified bytes of one range (CorruptionError if they fail)."""
        key = (band, r.data_offset)
        with self._lock:
            data = self._ranges.get(key)
            if data is not None:
                self._ranges.move_to_end(key)
                return data
        data = self.store.get_range(preview_key(band), r.data_offset, r.length)
        if len(data) != r.length or hashlib.sha256(data).digest() != r.sha256:
            raise CorruptionError(
                f"preview object of band {band}: the range at {r.data_offset} fails its SHA-256"
            )
        with self._lock:
            if key not in self._ranges:
                self._ranges[key] = data
                self._range_bytes += len(data)
            while self._range_bytes > RANGE_CACHE_BYTES and len(self._ranges) > 1:
                _, old = self._ranges.popitem(last=False)
                self._range_bytes -= len(old)
        return data


class PreviewFile:
    """An archived file opened for its preview ranges. `opener` is who opened it: a read of
    cold bytes asks the restore guards about that process (FUSE tells a read nothing of
    its reader)."""

    def __init__(
        self,
        previews: Previews,
        band: BandId,
        blob: BlobId,
        size: int,
        ranges: tuple[PreviewRange, ...],
        state: str,
        opener: Opener,
    ) -> None:
        self.previews, self.band, self.blob, self.size = previews, band, blob, size
        self.ranges = ranges  # sorted, not touching (the snapshot merged them)
        self._starts = [r.file_offset for r in ranges]
        self.state, self.opener = state, opener

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.read_view(offset, length))

    def read_view(self, offset: int, length: int) -> bytes:
        """The bytes from `offset` to at most the end of the kept range holding it;
        Archived when `offset` is in cold bytes."""
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        i = bisect_right(self._starts, offset) - 1
        if i < 0 or offset >= self.ranges[i].end:
            raise Archived(self.band, self.state)
        r = self.ranges[i]
        data = self.previews.range_bytes(self.band, r)
        start = offset - r.file_offset
        return data[start : start + min(length, r.end - offset)]
