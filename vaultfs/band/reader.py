"""Reading a band: `BandReader` (random access, verified) and `ReadAhead` (its threads).

A `BandReader` reads through ``read_range(start, length) -> bytes`` (a local file or ranged
GETs), so it neither knows nor cares where the band lies. It loads the seek table (unless
the caller has the frames, e.g. from the sidecar) and the catalog lazily from the tail:
one read of TAIL_READ bytes usually gets both. Every byte returned has passed its frame's
zstd checksum (`decompress_each`); blobs also their SHA-256. A reader may be shared by
threads; it loads its tail once, under a lock, and keeps recently decompressed frames in
an LRU (FRAME_CACHE_BYTES) so small files of one frame cost one decompression.

Threads: a reader starts none. `BandReader.prefetch` hands frames to a `ReadAhead`, whose
threads its creator owns and stops with `ReadAhead.close` (the mount's view does).
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from vaultfs.band.catalog import BlobLocation, catalog_blobs, parse_catalog, parse_catalog_frame
from vaultfs.band.frames import (
    Frame,
    check_frames,
    decompress_each,
    decompress_frames,
    frames_for_range,
    read_seek_table,
    seek_table_length,
)
from vaultfs.errors import CorruptionError

FRAME_CACHE_BYTES = 32 * 1024 * 1024  # per reader: recently decompressed frames
TAIL_READ = 64 * 1024  # first read of a band's tail: seek table + catalog frame, usually
PREFETCH_THREADS = 2
_EMPTY_SHA256 = hashlib.sha256().digest()


class ReadAhead:
    """The threads that decompress frames before a sequential reader asks for them.

    Whoever reads bands sequentially (the mount's view) makes one, passes it to
    `BandReader.prefetch`, and closes it when done; every reader shares it. Threads start
    on first use, or all at once with `start` (after a fork: threads do not survive it).
    """

    def __init__(self, threads: int = PREFETCH_THREADS) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="band-prefetch")

    def start(self) -> None:
        """Start the threads now, so the first read does not wait for them to start."""
        for _ in range(self.threads):
            self._pool.submit(int)

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` in a thread; RuntimeError once closed."""
        self._pool.submit(fn, *args)

    def close(self) -> None:
        """Finish the work handed over (its readers may be waiting for it), then stop the
        threads. Idempotent."""
        self._pool.shutdown(wait=True)


class BandReader:
    """Random access to one band through `read_range(start, length) -> bytes` (a local file or
    ranged GETs). The seek table (unless `frames` is given, e.g. from the sidecar) and the
    catalog are loaded lazily from the tail: one read of TAIL_READ bytes usually gets both.
    Every byte returned has passed its frame's zstd checksum; blobs also their SHA-256.
    Structural or checksum failures raise CorruptionError naming the band (`label`).
    """

    def __init__(
        self,
        read_range: Callable[[int, int], bytes],
        size: int,
        frames: tuple[Frame, ...] | None = None,
        *,
        label: str = "?",
        cache_bytes: int = FRAME_CACHE_BYTES,
    ) -> None:
        self._read, self.size, self.label = read_range, size, label
        self._frames = frames
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._catalog_bytes: bytes | None = None
        self._catalog: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._frames_ok = False
        self._pending: dict[int, Future[bytes]] = {}  # frames being decompressed by `prefetch`
        self._starts: list[int] | None = None

    @property
    def frames(self) -> tuple[Frame, ...]:
        """The seek table. Frames given by the caller (the local catalog) are only checked
        against the band's size: reading file content then never fetches or decompresses
        the catalog frame at the tail (MiBs in a large band); `catalog` still does."""
        if self._frames is not None and self._frames_ok:
            return self._frames
        if self._frames is not None:
            check_frames(self._frames, self.size, self.label)
            self._frames_ok = True
            return self._frames
        self._load()
        assert self._frames is not None
        return self._frames

    def frame_index(self, offset: int) -> int:
        """The index in `frames` of the frame holding uncompressed byte `offset` (clamped)."""
        starts = self._starts
        if starts is None:
            starts = self._starts = [f.uncompressed_offset for f in self.frames]
        return max(0, bisect.bisect_right(starts, offset) - 1)

    def prefetch(self, index: int, read_ahead: ReadAhead) -> None:
        """Start decompressing frame `index` in a background thread (a sequential reader will
        want it next), unless it is cached or underway. A later read of it waits for that
        work instead of repeating it; a failure reaches that read (and only it)."""
        frames = self.frames
        if not 0 <= index < len(frames):
            return
        f = frames[index]
        with self._lock:
            if f.compressed_offset in self._cache or f.compressed_offset in self._pending:
                return
            future: Future[bytes] = Future()
            self._pending[f.compressed_offset] = future
        try:
            read_ahead.submit(self._fill, f, future)
        except RuntimeError:  # closed: do it here, for a read that may be waiting on it
            self._fill(f, future)

    def _fill(self, f: Frame, future: Future[bytes]) -> None:
        try:
            data = self._read(f.compressed_offset, f.compressed_size)
            piece = decompress_each(data, (f,))[0]
        except CorruptionError as e:
            future.set_exception(CorruptionError(f"band {self.label}: {e.message}"))
        except BaseException as e:  # a store error: the read that wanted the frame reports it
            future.set_exception(e)
        else:
            self._remember_frames({f.compressed_offset: piece})
            future.set_result(piece)
        finally:
            with self._lock:
                self._pending.pop(f.compressed_offset, None)

    @property
    def catalog_bytes(self) -> bytes:
        """The catalog JSON exactly as stored."""
        self._load()
        assert self._catalog_bytes is not None
        return self._catalog_bytes

    @property
    def catalog(self) -> dict[str, Any]:
        """The parsed catalog (shared: do not modify)."""
        if self._catalog is None:
            self._catalog = parse_catalog(self.catalog_bytes, self.label)
        return self._catalog

    def blobs(self) -> tuple[tuple[str, BlobLocation], ...]:
        """(member name, location) of every blob listed in the catalog."""
        return catalog_blobs(self.catalog, self.label)

    @property
    def uncompressed_size(self) -> int:
        last = self.frames[-1]
        return last.uncompressed_offset + last.uncompressed_size

    def read_blob(self, loc: BlobLocation) -> bytes:
        """The blob's bytes; CorruptionError unless they hash to loc.sha256."""
        return b"".join(self.iter_blob(loc, chunk_frames=len(self.frames)))

    def iter_blob(self, loc: BlobLocation, chunk_frames: int = 4) -> Iterator[bytes]:
        """The blob's bytes, `chunk_frames` frames at a time. The SHA-256 is checked before the
        last chunk is yielded, so a consumer that finishes has the right bytes."""
        frames = self._blob_frames(loc)
        h = hashlib.sha256()
        if not frames:
            if loc.sha256 != _EMPTY_SHA256:
                raise CorruptionError(f"band {self.label}: empty blob has wrong SHA-256")
            return
        start, end = loc.offset, loc.offset + loc.size
        for i in range(0, len(frames), max(1, chunk_frames)):
            group = frames[i : i + max(1, chunk_frames)]
            data = self._decompress(group)
            base = group[0].uncompressed_offset
            piece = data[max(start - base, 0) : end - base]
            h.update(piece)
            if i + len(group) >= len(frames) and h.digest() != loc.sha256:
                raise CorruptionError(
                    f"band {self.label}: blob {loc.sha256.hex()} at {loc.offset} fails SHA-256"
                )
            yield piece

    def read_uncompressed(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the tar stream, clipped at its end (like pread)."""
        length = max(0, min(length, self.uncompressed_size - offset))
        frames = frames_for_range(self.frames, offset, length)
        if not frames:
            return b""
        base = frames[0].uncompressed_offset
        return self._decompress(frames)[offset - base : offset - base + length]

    def read_view(self, offset: int, length: int) -> bytes | memoryview:
        """Like `read_uncompressed`, but a range inside one frame comes back as a read-only
        view of the (cached, immutable) decompressed frame: no copy."""
        length = max(0, min(length, self.uncompressed_size - offset))
        frames = frames_for_range(self.frames, offset, length)
        if len(frames) != 1:
            return self.read_uncompressed(offset, length)
        base = frames[0].uncompressed_offset
        return memoryview(self._decompress(frames))[offset - base : offset - base + length]

    # internals

    def _blob_frames(self, loc: BlobLocation) -> Sequence[Frame]:
        try:
            return frames_for_range(self.frames[:-1], loc.offset, loc.size)  # not the catalog
        except ValueError as e:
            raise CorruptionError(f"band {self.label}: blob outside the band: {e}") from e

    def peek_view(self, offset: int, length: int) -> memoryview | None:
        """`read_view` if the range lies in one frame that is already decompressed and
        cached; else None. Never blocks on I/O or decompression (an event loop may call it)."""
        if self._frames is None or length <= 0:  # the seek table is not loaded yet
            return None
        f = self.frames[self.frame_index(offset)]
        base = f.uncompressed_offset
        if offset + length > base + f.uncompressed_size:
            return None
        with self._lock:
            data = self._cache.get(f.compressed_offset)
            if data is None:
                return None
            self._cache.move_to_end(f.compressed_offset)
        return memoryview(data)[offset - base : offset - base + length]

    def _decompress(self, frames: Sequence[Frame]) -> bytes:
        """The frames' bytes, from the LRU of recently decompressed frames where possible.

        Reading many small files of one frame (a restore, a directory browsed in the
        mount) then decompresses that frame once, not once per file.
        """
        with self._lock:
            cached: list[bytes | None] = [self._cache.get(f.compressed_offset) for f in frames]
            for f, c in zip(frames, cached, strict=True):
                if c is not None:
                    self._cache.move_to_end(f.compressed_offset)
            underway = [
                (i, self._pending.get(f.compressed_offset))
                for i, (f, c) in enumerate(zip(frames, cached, strict=True))
                if c is None
            ]
        for i, future in underway:
            if future is not None:  # being prefetched: wait for it rather than decompress twice
                cached[i] = future.result()
        missing = [f for f, c in zip(frames, cached, strict=True) if c is None]
        if missing:
            first, last = missing[0], missing[-1]
            span = [
                f for f in frames if first.compressed_offset <= f.compressed_offset <= last.compressed_offset
            ]
            start = first.compressed_offset
            data = self._read(start, last.compressed_offset + last.compressed_size - start)
            try:
                pieces = decompress_each(data, span)
            except CorruptionError as e:
                raise CorruptionError(f"band {self.label}: {e.message}") from e
            fresh = {f.compressed_offset: p for f, p in zip(span, pieces, strict=True)}
            cached = [
                c if c is not None else fresh[f.compressed_offset]
                for f, c in zip(frames, cached, strict=True)
            ]
            self._remember_frames(fresh)
        return b"".join(c for c in cached if c is not None)

    def _remember_frames(self, fresh: dict[int, bytes]) -> None:
        with self._lock:
            for offset, data in fresh.items():
                if len(data) > self._cache_limit // 2 or offset in self._cache:
                    continue
                self._cache[offset] = data
                self._cache_bytes += len(data)
            while self._cache_bytes > self._cache_limit and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)

    def _load(self) -> None:
        with self._lock:
            if self._catalog_bytes is not None:
                return
            try:
                self._load_tail()
            except CorruptionError as e:
                raise CorruptionError(f"band {self.label}: {e.message}") from e

    def _load_tail(self) -> None:
        tail_start = max(0, self.size - TAIL_READ)
        tail = self._read(tail_start, self.size - tail_start)
        if len(tail) != self.size - tail_start:
            raise CorruptionError("short read at the end of the band")
        if self._frames is None:
            need = seek_table_length(tail)
            if need > self.size:
                raise CorruptionError("seek table larger than the band")
            if need > len(tail):
                tail_start, tail = self.size - need, self._read(self.size - need, need)
            frames = read_seek_table(tail)
            if not frames or frames[-1].compressed_offset + frames[-1].compressed_size + need != self.size:
                raise CorruptionError("seek table does not match the band's size")
            self._frames = frames
        check_frames(self._frames, self.size, None)
        last = self._frames[-1]
        if last.compressed_offset >= tail_start:
            rel = last.compressed_offset - tail_start
            data = tail[rel : rel + last.compressed_size]
        else:
            data = self._read(last.compressed_offset, last.compressed_size)
        self._catalog_bytes = parse_catalog_frame(decompress_frames(data, (last,)))
