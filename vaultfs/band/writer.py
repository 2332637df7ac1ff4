"""Writing a band: `BandWriter` packs blobs into a tar stream, cut into zstd frames.

Data frames hold exactly ``frame_size`` uncompressed bytes (the last data frame may be
shorter, and a frame is also cut before each streamed member, and with ``whole_members``
before an in-memory member that would otherwise straddle two frames); `close` appends the
catalog frame (`catalog.catalog_frame`) and the seek table, then re-reads the file's tail
to check it. `ClosedBand` describes the result; `reopen_closed` describes a finished band
file again (a snapshot resumed after a kill).

Threads: a writer is used by one thread (its owner's) and starts two thread pools, both
on the first frame and both stopped and joined by `BandWriter.close` or
`BandWriter.abort` (the owner calls one of them; ``with BandWriter(...)`` aborts on
error):

* ``band-zstd`` (``threads`` workers) compresses frames; zstd releases the GIL;
* ``band-writer`` (one worker) writes the compressed frames in order and hashes them.

At most ``threads + FRAMES_AHEAD`` frames are between the owner's thread and the disk.
Both are executors, not hand-made daemon threads: a daemon writer could be killed halfway
through a write at interpreter exit, and the writer's queue, ordering and shutdown are
what a one-worker executor already is. (One an owner forgot is still joined at exit.)
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vaultfs.band.catalog import (
    CATALOG_MEMBER,
    BlobLocation,
    catalog_frame,
    catalog_json,
    check_extra_keys,
    level_runs,
    levels_from_catalog,
)
from vaultfs.band.compression import FRAME_SIZE_DEFAULT, compress_frame
from vaultfs.band.direct_file import BandFile
from vaultfs.band.frames import FRAME_SIZE_MAX, Frame, encode_seek_table
from vaultfs.band.reader import BandReader
from vaultfs.band.tar import BLOCK, MemberMeta, member_header
from vaultfs.errors import CorruptionError
from vaultfs.fsutil import fsync_path
from vaultfs.malloc import release_free_memory

_READ_PIECE = 1024 * 1024  # streamed members: read and hash in pieces that stay in L2
# Frames in flight beyond one per compression thread. With only one, a thread that
# finished its frame often waited while the writer wrote it and the caller read and
# hashed the next (~7 ms of a ~40 ms frame: both cores were busy only 1.7-1.9 of 2).
# Measured alternating (tools/bench/ab.py, 4 rounds each) against 3: 1 is 2.5 % slower
# with 8.5 MiB less peak RSS, 2 is 1.3 % slower with 4.5 MiB less. 2 keeps most of the
# gain and the snapshot's peak RSS well under its 150 MiB target.
FRAMES_AHEAD = 2
TRIM_EVERY_FRAMES = 4  # writer: hand free heap pages back this often (peak RSS; 8: +3.7 MiB)

ReadInto = Callable[[memoryview, int], int]
"""Fill a view with content from an offset; return the byte count (0: end of content)."""


class LevelChooser(Protocol):
    """What chooses each frame's level (`vaultfs.snapshot.autolevel.AutoLevel`)."""

    def next_level(self) -> int:
        """The level of the frame handed over now (the owner's thread)."""
        ...

    def compressed(self, level: int, size: int, compressed_size: int, seconds: float) -> None:
        """A frame of `size` bytes came out `compressed_size` bytes after `seconds` at `level`
        (a pool thread)."""
        ...


@dataclass(frozen=True, slots=True)
class ClosedBand:
    """A band written, synced and re-checked; ``frame_levels[i]`` is data frame i's zstd
    level (the catalog frame's is not recorded, as in the catalog's ``frame_levels``)."""

    band_id: str
    path: Path
    size: int  # bytes of the whole file
    sha256: bytes  # of the whole file
    frames: tuple[Frame, ...]
    blobs: tuple[BlobLocation, ...]
    catalog: bytes  # the catalog JSON exactly as stored in the band
    uncompressed_size: int
    frame_levels: tuple[int, ...] = ()


class ContentChanged(Exception):
    """A streamed file did not yield the size or SHA-256 announced; the member was rolled back."""


def check_member_name(name: bytes) -> None:
    """Raise ValueError unless `name` is a relative path that tar extracts without a warning."""
    if (
        not name
        or b"\0" in name
        or name.startswith(b"/")
        or name.endswith(b"/")
        or b".." in name.split(b"/")
        or name == CATALOG_MEMBER.encode()
    ):
        raise ValueError(f"invalid band member name {name!r}")


@dataclass(slots=True)
class _Checkpoint:
    """Where the band stood before a streamed member: ``frames`` frames precede it.

    ``written`` and ``hasher`` are filled once the last of those frames is on disk
    (frames still compressing when the member starts are not waited for).
    """

    frames: int
    uncompressed: int
    written: int | None = None
    hasher: Any = None


class BandWriter:
    """Write one band file at `path` (created exclusively; deleted by `abort`).

    Blobs go in with `add_blob` (in memory) or `add_blob_stream` (large files, rolled back on
    ContentChanged). `close` writes the catalog, end of archive and seek table, fsyncs, and
    re-reads the seek table and catalog from the file to check them. After `close` or `abort`
    the writer is unusable and its threads are joined; its owner calls one of them.
    """

    def __init__(
        self,
        path: Path,
        band_id: str,
        *,
        level: int = 3,
        frame_size: int = FRAME_SIZE_DEFAULT,
        threads: int = 2,
        whole_members: bool = False,
        fixed_window: bool = False,
    ) -> None:
        if not 0 < frame_size <= FRAME_SIZE_MAX:
            raise ValueError(f"frame_size must be in (0, {FRAME_SIZE_MAX}]")
        self.path, self.band_id, self.level, self.frame_size = path, band_id, level, frame_size
        # Cut the frame early rather than let a member added with `add_blob` that fits in a
        # frame straddle two (the warm tier: one small file = one ranged GET of one frame
        # and one decompression; docs/band-format.md, "Frames").
        self.whole_members = whole_members
        # Levels above 3 keep level 3's window, as with "auto" (`vaultfs recompress`: its
        # bands need no more memory to read than the snapshot's).
        self.fixed_window = fixed_window
        self._file = BandFile(path)  # owned until close/abort; O_DIRECT where possible
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="band-zstd")
        # Frames compressed but not yet written are bounded (memory); a writer thread
        # writes and hashes them in order, so the caller's thread only reads and packs.
        self._slots = threading.Semaphore(max(1, threads) + FRAMES_AHEAD)
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="band-writer")
        self._last_write: Future[None] | None = None  # the writer thread works in order
        self._state = threading.Lock()  # frames, written, hasher, checkpoint
        self._writer_error: BaseException | None = None
        self._frames_submitted = 0
        self._checkpoint: _Checkpoint | None = None
        # The frame being filled: a fixed buffer that files are read into directly
        # (no copy between the read and the frame); handed to the pool when full and
        # recycled once compressed, so steady state allocates nothing.
        self._buf = bytearray(frame_size)
        self._fill = 0
        self._spare: list[bytearray] = []
        self._submitted = 0  # uncompressed bytes handed to the pool
        self._written = 0  # compressed bytes in the file
        self._hasher = hashlib.sha256()
        self._frames: list[Frame] = []
        self._levels: list[int] = []
        self._blobs: list[BlobLocation] = []
        self._names: list[str] = []
        self.on_stall: Callable[[], bool] | None = None
        """Called instead of waiting while compression is behind; returns whether it did
        some work (False: nothing to do, so wait). It must not use this writer."""
        self.auto: LevelChooser | None = None
        """Set: asked for each data frame's level as the frame is handed over (``level``
        stays the catalog frame's), told how long each took, and levels above 3 keep
        level 3's window (``compression_level = "auto"``, `vaultfs.snapshot.autolevel`)."""
        self._open = True
        self._closed = False  # close() succeeded: the file is a finished band

    @property
    def uncompressed_size(self) -> int:
        """Tar bytes written so far."""
        return self._submitted + self._fill

    @property
    def uncompressed_written(self) -> int:
        """Tar bytes whose frames are compressed and in the file (behind `uncompressed_size`
        by the frames in flight)."""
        frames = self._frames
        return frames[-1].uncompressed_offset + frames[-1].uncompressed_size if frames else 0

    def add_blob(
        self, name: bytes, meta: MemberMeta, data: bytes | memoryview, sha256: bytes
    ) -> BlobLocation:
        """Append a member with `data`, whose SHA-256 the caller computed (not re-checked)."""
        self._check(name, sha256)
        header = member_header(name, meta, len(data))
        padding = -len(data) % BLOCK
        if self.whole_members:
            member = len(header) + len(data) + padding
            if self._fill + member > self.frame_size >= member:
                self._flush()  # it would cross the frame's end, and fits in a frame of its own
        self._append(header)
        loc = BlobLocation(sha256, self.uncompressed_size, len(data))
        self._append(data)
        self._append(b"\0" * padding)
        return self._remember(name, loc)

    def add_blob_stream(
        self,
        name: bytes,
        meta: MemberMeta,
        size: int,
        read: ReadInto,
        sha256: bytes | None = None,
        *,
        skip_if: Callable[[bytes], bool] | None = None,
    ) -> BlobLocation | None:
        """Append a member of `size` bytes that `read` fills in; its content starts a frame.

        `read(view, offset)` fills `view` with content from `offset` and returns how many
        bytes it wrote (0 at the end); it reads straight into the frame buffer, and each
        piece is hashed while it is still in the CPU cache. If the content is not exactly
        `size` bytes (or hashes differently from a given `sha256`, or `read` raises), the
        band is rolled back to before this member and ContentChanged (or the error) is
        raised. With `skip_if`, a member whose SHA-256 it accepts (a blob the vault already
        has) is rolled back too and None is returned: one read of a large file serves both
        the dedup decision and the band. The writer stays usable either way.

        One loop on purpose: it is the snapshot's hot path for large files (read, hash and
        frame each piece while it is in the CPU cache), and every call it would be split
        into costs per piece.
        """
        self._check(name, sha256 if sha256 is not None else bytes(32))
        self._flush()
        with self._state:
            cp = _Checkpoint(self._frames_submitted, self._submitted)
            if len(self._frames) == cp.frames:
                cp.written, cp.hasher = self._written, self._hasher.copy()
            self._checkpoint = cp
        try:
            # The header gets a small frame of its own, so the content starts on a frame
            # boundary: reads of whole MiBs of the file then never straddle two frames.
            self._append(member_header(name, meta, size))
            self._flush()
            offset = self.uncompressed_size
            h, n = hashlib.sha256(), 0
            while n < size:
                if self._fill == self.frame_size:
                    self._flush()
                want = min(_READ_PIECE, size - n, self.frame_size - self._fill)
                piece = memoryview(self._buf)[self._fill : self._fill + want]
                got = read(piece, n)
                if got == 0:
                    break
                h.update(piece[:got])
                self._fill += got
                n += got
            digest = h.digest()
            if (
                n != size
                or read(memoryview(bytearray(1)), n) != 0
                or (sha256 is not None and digest != sha256)
            ):
                raise ContentChanged(f"{name!r}: size or SHA-256 changed while reading")
            if skip_if is not None and skip_if(digest):
                self._rollback(cp)
                return None
            self._append(b"\0" * (-size % BLOCK))
        except BaseException:
            self._rollback(cp)
            raise
        finally:
            self._checkpoint = None
        return self._remember(name, BlobLocation(digest, offset, size))

    def close(self, extra: dict[str, Any], *, sync: bool = True) -> ClosedBand:
        """Write catalog (with `extra` keys), end of archive and seek table; fsync; re-check.

        With ``sync=False`` the caller takes over making the file durable
        (`sync_band`), e.g. in a background thread, so that flushing a 1 GiB band
        to disk does not stall the packing of the next one.
        """
        self._check_open()
        check_extra_keys(extra)
        self._flush()
        self._drain()
        self._buf, self._spare = bytearray(), []  # frame buffers are not needed any more
        extra = {**extra, "frame_levels": level_runs(self._levels)}
        catalog = catalog_json(self.band_id, self._hasher.hexdigest(), self._blobs, self._names, extra)
        last = catalog_frame(catalog)
        self._submit(last, len(last), self.level)
        self._drain()
        self._writes.shutdown()
        table = encode_seek_table(self._frames)
        self._file.write(table)
        self._hasher.update(table)
        self._file.finish(sync=sync)
        self._pool.shutdown()
        self._open = False
        if sync:
            fsync_path(self.path.parent)
        band = ClosedBand(
            self.band_id,
            self.path,
            self._written + len(table),
            self._hasher.digest(),
            tuple(self._frames),
            tuple(self._blobs),
            catalog,
            self._submitted,
            tuple(self._levels[:-1]),  # the data frames: what the catalog records
        )
        _verify_written(band)
        self._closed = True
        return band

    def abort(self) -> None:
        """Stop and join the writer's threads and delete the file, unless `close` succeeded.
        Idempotent."""
        if self._closed:
            return
        if self._open:
            self._open = False
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._writes.shutdown(wait=True, cancel_futures=True)
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> BandWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._open:
            self.abort()

    # internals

    def _check_open(self) -> None:
        if not self._open:
            raise ValueError("band writer is closed")

    def _check(self, name: bytes, sha256: bytes) -> None:
        self._check_open()
        check_member_name(name)
        if len(sha256) != 32:
            raise ValueError("sha256 must be 32 raw bytes")

    def _remember(self, name: bytes, loc: BlobLocation) -> BlobLocation:
        self._blobs.append(loc)
        self._names.append(name.decode("utf-8", "surrogateescape"))
        return loc

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        fill, end = self._fill, self._fill + len(data)
        if end < self.frame_size:  # the common case: it fits in the frame being filled
            self._buf[fill:end] = data
            self._fill = end
            return
        view = memoryview(data)
        while len(view):
            take = min(len(view), self.frame_size - self._fill)
            self._buf[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self.frame_size:
                self._flush()

    def _flush(self) -> None:
        """Hand the filled part of the frame buffer to the pool; continue in a spare one."""
        if not self._fill:
            return
        buf, n = self._buf, self._fill
        self._buf = self._spare.pop() if self._spare else bytearray(self.frame_size)
        self._fill = 0
        level = self.level if self.auto is None else self.auto.next_level()
        self._submit(buf, n, level, recycle=True)

    def _submit(self, buf: bytearray, n: int, level: int, *, recycle: bool = False) -> None:
        """Compress ``buf[:n]`` at `level` in the pool as the next frame; the writer thread
        writes it."""
        self._raise_writer_error()
        # The slots bound the frames between here and the disk. While none is free
        # (zstd is behind), the caller may do other work instead of waiting.
        while not self._slots.acquire(blocking=False):
            if self.on_stall is None or not self.on_stall():
                self._slots.acquire()
                break
        fut = self._pool.submit(self._compress, buf, n, level, recycle)
        self._last_write = self._writes.submit(self._write_frame, fut, self._submitted, n)
        self._submitted += n
        self._frames_submitted += 1

    def _compress(self, buf: bytearray, n: int, level: int, recycle: bool) -> tuple[bytes, int]:
        """A pool thread: compress one frame, then give its buffer back for reuse."""
        try:
            auto = self.auto
            if auto is None:
                return compress_frame(memoryview(buf)[:n], level, fixed_window=self.fixed_window)
            began = time.perf_counter()
            data, used = compress_frame(memoryview(buf)[:n], level, fixed_window=True)
            if used == level:  # not an incompressible frame sent at the cheapest level
                auto.compressed(level, n, len(data), time.perf_counter() - began)
            return data, used
        finally:
            if recycle and self._open:
                self._spare.append(buf)

    def _write_frame(self, fut: Future[tuple[bytes, int]], uoff: int, usize: int) -> None:
        """The writer thread: one frame, in order → file, band SHA-256, seek table entry."""
        try:
            data, level = fut.result()
            if self._writer_error is None:
                with self._state:  # the caller's thread copies the hasher at checkpoints
                    self._file.write(data, self._hasher)
                    self._frames.append(Frame(self._written, len(data), uoff, usize))
                    self._levels.append(level)
                    self._written += len(data)
                    cp = self._checkpoint
                    if cp is not None and cp.written is None and len(self._frames) == cp.frames:
                        cp.written, cp.hasher = self._written, self._hasher.copy()
                if len(self._frames) % TRIM_EVERY_FRAMES == 0:
                    release_free_memory()
        except BaseException as e:  # handed to the caller's thread
            if self._writer_error is None:
                self._writer_error = e
        finally:
            self._slots.release()

    def _raise_writer_error(self) -> None:
        if self._writer_error is not None:
            raise self._writer_error

    def _drain(self) -> None:
        """Wait until every frame handed over is written."""
        self._wait_writes()
        self._raise_writer_error()

    def _wait_writes(self) -> None:
        """Wait for the writer thread to finish every frame handed over (it works in order,
        so the last one is enough); its errors are kept in ``_writer_error``."""
        if self._last_write is not None:
            self._last_write.result()

    def _rollback(self, cp: _Checkpoint) -> None:
        """Forget a member: wait for the writer, then cut the file back to the checkpoint."""
        self._wait_writes()  # the member's frames are written too; they are cut off below
        self._fill = 0
        assert cp.written is not None
        self._file.truncate(cp.written)
        with self._state:
            del self._frames[cp.frames :], self._levels[cp.frames :]
            self._written, self._hasher = cp.written, cp.hasher
        self._submitted, self._frames_submitted = cp.uncompressed, cp.frames


def sync_band(path: Path) -> None:
    """Make a band closed with ``sync=False`` durable (its data; not its directory entry)."""
    fsync_path(path)


def _verify_written(band: ClosedBand) -> None:
    """Re-read the seek table and catalog from the file and compare (restic's verifyHeader)."""
    with open(band.path, "rb") as f:

        def read_range(start: int, length: int) -> bytes:
            f.seek(start)
            return f.read(length)

        reader = BandReader(read_range, os.fstat(f.fileno()).st_size, label=band.band_id)
        if reader.size != band.size or reader.frames != band.frames or reader.catalog_bytes != band.catalog:
            raise CorruptionError(f"band {band.band_id}: file does not read back as written")


def reopen_closed(path: Path) -> ClosedBand:
    """A finished band file found in the spool, described as `BandWriter.close` did.

    Used to resume: a band closed by a snapshot that was killed before it was
    uploaded. The whole file is hashed and its structure checked.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
        size = f.tell()

        def read_range(start: int, length: int) -> bytes:
            return os.pread(f.fileno(), length, start)

        band_id = path.name.split(".", 1)[0]
        reader = BandReader(read_range, size, label=band_id)
        blobs = tuple(loc for _, loc in reader.blobs())
        return ClosedBand(
            band_id=band_id,
            path=path,
            size=size,
            sha256=h.digest(),
            frames=reader.frames,
            blobs=blobs,
            catalog=reader.catalog_bytes,
            uncompressed_size=reader.uncompressed_size,
            frame_levels=levels_from_catalog(reader.catalog_bytes, band_id),
        )
