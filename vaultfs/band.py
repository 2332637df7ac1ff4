"""THE band format: seekable zstd frames over a POSIX pax tar stream. Writer and reader.

A band file is (docs/band-format.md has the full specification)::

    zstd frame 0 | zstd frame 1 | ... | catalog frame | seek table (skippable frame)

* The concatenated decompressed frames are one pax tar stream: one regular-file
  member per blob, then the member ``.vaultfs/catalog.json`` (the catalog), then
  tar's end of archive (two zero blocks). ``zstd -dc band | tar -x`` restores it.
* Data frames hold exactly ``frame_size`` uncompressed bytes (the last data frame
  may be shorter, and a frame is also cut before each streamed member); every
  frame has zstd's content checksum and content size.
* The catalog member's header, JSON, padding and end of archive form the single
  last frame; it begins on a fresh frame.
* The seek table is the zstd seekable format's: skippable frame (magic
  0x184D2A5E), entries ``<u32 compressed_size, u32 decompressed_size>`` (no
  checksums), footer ``<u32 frames, u8 descriptor=0, u32 0x8F92EAB1>``.
* Pax headers use only keywords GNU tar knows (path, size, mtime, uid, gid,
  uname, gname, SCHILY.xattr.*); names that are not UTF-8 go into ``path`` raw
  (GNU tar 1.34 warns about ``hdrcharset``, so it is not written).

Concurrency: a `BandWriter` is used by one thread. It compresses frames in its
own thread pool (zstd releases the GIL), at most ``threads + FRAMES_AHEAD``
frames in flight, and writes them in order from a writer thread. A `BandReader` may be
shared by threads; it loads its seek table and catalog once, under a lock.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import io
import json
import mmap
import os
import queue
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from vaultfs.bandfile import BandFile
from vaultfs.errors import CorruptionError
from vaultfs.fsutil import fsync_path
from vaultfs.malloc import release_free_memory

FRAME_SIZE_DEFAULT = 4 * 1024 * 1024
FRAME_SIZE_MAX = 1 << 31  # seek table entries are u32; leave room for zstd's overhead
CATALOG_MEMBER = ".vaultfs/catalog.json"
CATALOG_FORMAT = 1
_READ_PIECE = 1024 * 1024  # streamed members: read and hash in pieces that stay in L2
# Frames in flight beyond one per compression thread. With only one, a thread that
# finished its frame often waited while the writer wrote it and the caller read and
# hashed the next (~7 ms of a ~40 ms frame: both cores were busy only 1.7-1.9 of 2).
# Measured alternating (tools/bench/ab.py, 4 rounds each) against 3: 1 is 2.5 % slower
# with 8.5 MiB less peak RSS, 2 is 1.3 % slower with 4.5 MiB less. 2 keeps most of the
# gain and the snapshot's peak RSS well under its 150 MiB target.
FRAMES_AHEAD = 2
TRIM_EVERY_FRAMES = 4  # writer: hand free heap pages back this often (peak RSS; 8: +3.7 MiB)
FRAME_CACHE_BYTES = 32 * 1024 * 1024  # per reader: recently decompressed frames
TAIL_READ = 64 * 1024  # first read of a band's tail: seek table + catalog frame, usually
CHEAP_LEVEL = -1  # for incompressible frames; see docs/band-format.md for the measurements
SAMPLE_SLICES, SAMPLE_SLICE = 4, 16 * 1024  # incompressibility probe: 4 x 16 KiB at level 1
INCOMPRESSIBLE_RATIO = 0.97  # probe must shrink by more than 3 % to use the configured level
DEFAULT_LEVEL = 3
TEXT_LIKE_RATIO = 0.5  # probe ratio below this: text-like, zstd's own level 3 compresses best

SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
_FOOTER = struct.Struct("<IBI")
_ENTRY = struct.Struct("<II")
_BLOCK = 512
_OCT7, _OCT11 = 0o7777777, 0o77777777777
_EMPTY_SHA256 = hashlib.sha256().digest()


@dataclass(frozen=True, slots=True)
class MemberMeta:
    """Metadata of the file a blob was first seen as (written into its tar header)."""

    mode: int  # permission bits (st_mode & 0o7777)
    uid: int
    gid: int
    mtime_ns: int
    uname: str = ""
    gname: str = ""
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # (name, value)


@dataclass(frozen=True, slots=True)
class BlobLocation:
    """Where one blob's content lies in a band's uncompressed tar stream."""

    sha256: bytes  # 32 raw bytes
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Frame:
    """One zstd frame: its bytes in the band file and in the uncompressed tar stream."""

    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int


@dataclass(frozen=True, slots=True)
class ClosedBand:
    """A band written, synced and re-checked; ``frame_levels[i]`` is frame i's zstd level."""

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


# --- tar headers -------------------------------------------------------------------------


def _pax_record(key: bytes, value: bytes) -> bytes:
    n = len(key) + len(value) + 3  # " ", "=", "\n"
    digits = len(str(n))
    total = n + digits
    if len(str(total)) > digits:
        total += 1
    return b"%d %s=%s\n" % (total, key, value)


_USTAR_TAIL = b"\0" * 100 + b"ustar\x0000"  # linkname, magic, version
_USTAR_END = b"0000000\x000000000\x00" + b"\0" * 167  # devmajor, devminor, prefix, pad
_CONST_SUM = 8 * ord(" ") + sum(_USTAR_TAIL) + sum(_USTAR_END)  # chksum field counts as spaces


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
           uname: bytes, gname: bytes) -> bytes:
    fields = b"%07o%07o%07o%011o%011o" % (mode, uid, gid, size, mtime)
    # The checksum sums every byte; NULs add nothing, so sum only the non-constant bytes.
    chksum = sum(b"%s%s%s%s%s" % (name, fields, typeflag, uname, gname)) + _CONST_SUM
    return b"%s%s\0%s\0%s\0%s\0%s\0%06o\0 %s%s%s%s%s" % (
        name.ljust(100, b"\0"), fields[:7], fields[7:14], fields[14:21], fields[21:32],
        fields[32:], chksum, typeflag, _USTAR_TAIL, uname.ljust(32, b"\0"),
        gname.ljust(32, b"\0"), _USTAR_END)


@functools.lru_cache(maxsize=1024)
def _pax_block(size: int) -> bytes:
    return _ustar(b"././@PaxHeader", 0o644, 0, 0, size, 0, b"x", b"", b"")


def _xattr_key(name: bytes) -> bytes:
    # GNU tar percent-encodes '%' and '=' in xattr names (xheader.c: xattr_encode_keyword).
    return b"SCHILY.xattr." + name.replace(b"%", b"%25").replace(b"=", b"%3D")


def check_member_name(name: bytes) -> None:
    """Raise ValueError unless `name` is a relative path that tar extracts without a warning."""
    if (not name or b"\0" in name or name.startswith(b"/") or name.endswith(b"/")
            or b".." in name.split(b"/") or name == CATALOG_MEMBER.encode()):
        raise ValueError(f"invalid band member name {name!r}")


def member_header(name: bytes, meta: MemberMeta, size: int) -> bytes:
    """The tar header block(s) of a regular-file member: a pax 'x' header only when needed."""
    records: list[bytes] = []
    if len(name) <= 100 and name.isascii():
        ustar_name = name
    else:
        records.append(_pax_record(b"path", name))
        ustar_name = name[:100].decode("ascii", "replace").encode("ascii", "replace")
    if size > _OCT11:
        records.append(_pax_record(b"size", b"%d" % size))
    # GNU tar warns about times before 1970 ("implausibly old time stamp"): clamp to 0.
    sec, ns = divmod(max(meta.mtime_ns, 0), 1_000_000_000)
    if ns or sec > _OCT11:
        records.append(_pax_record(b"mtime", b"%d.%09d" % (sec, ns)))
    uid, gid = meta.uid, meta.gid
    if uid < 0 or gid < 0:
        raise ValueError("negative uid/gid")
    if uid > _OCT7:
        records.append(_pax_record(b"uid", b"%d" % uid))
    if gid > _OCT7:
        records.append(_pax_record(b"gid", b"%d" % gid))
    uname = meta.uname.encode("utf-8", "surrogateescape")
    gname = meta.gname.encode("utf-8", "surrogateescape")
    if len(uname) > 32 or not uname.isascii():
        records.append(_pax_record(b"uname", uname))
        uname = b""
    if len(gname) > 32 or not gname.isascii():
        records.append(_pax_record(b"gname", gname))
        gname = b""
    for xname, xvalue in meta.xattrs:
        records.append(_pax_record(_xattr_key(xname), xvalue))
    block = _ustar(ustar_name, meta.mode & 0o7777, uid if uid <= _OCT7 else 0,
                   gid if gid <= _OCT7 else 0, size if size <= _OCT11 else 0,
                   sec if sec <= _OCT11 else 0, b"0", uname, gname)
    if not records:
        return block
    pax = b"".join(records)
    return b"%s%s%s%s" % (_pax_block(len(pax)),
                          pax, b"\0" * (-len(pax) % _BLOCK), block)


def _parse_member(stream: bytes) -> tuple[bytes, int, int]:
    """Parse the member at the start of `stream`: (name, content offset, size). ValueError."""
    pax: dict[bytes, bytes] = {}
    pos = 0
    while True:
        block = stream[pos:pos + _BLOCK]
        if len(block) < _BLOCK or int(block[148:156].strip(b"\0 ") or b"-1", 8) != (
                sum(block[:148]) + 256 + sum(block[156:])):
            raise ValueError("bad tar header")
        size = int(block[124:136].strip(b"\0 ") or b"0", 8)
        pos += _BLOCK
        if block[156:157] != b"x":
            break
        data, pos = stream[pos:pos + size], pos + size + (-size % _BLOCK)
        while data:
            length = int(data[:data.index(b" ")])
            if length <= 0:
                raise ValueError("bad pax record length")
            key, _, value = data[data.index(b" ") + 1:length - 1].partition(b"=")
            pax[key], data = value, data[length:]
    name = pax.get(b"path", block[:100].rstrip(b"\0"))
    return name, pos, int(pax[b"size"]) if b"size" in pax else size


ReadInto = Callable[[memoryview, int], int]
"""Fill a view with content from an offset; return the byte count (0: end of content)."""


# --- compression -----------------------------------------------------------------------

_local = threading.local()


def _compressor(level: int, checksum: bool = True) -> zstandard.ZstdCompressor:
    cache: dict[tuple[int, bool], zstandard.ZstdCompressor] = _local.__dict__.setdefault("c", {})
    if (level, checksum) not in cache:
        cache[level, checksum] = zstandard.ZstdCompressor(
            level=level, write_checksum=checksum, write_content_size=True)
    return cache[level, checksum]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "d"):
        _local.d = zstandard.ZstdDecompressor()
    return _local.d


def probe_ratio(data: bytes | bytearray | memoryview) -> float | None:
    """Compressed/original size of SAMPLE_SLICES slices of `data` at level 1 (None: too small)."""
    n = len(data)
    if n < SAMPLE_SLICES * SAMPLE_SLICE:
        return None
    step = (n - SAMPLE_SLICE) // (SAMPLE_SLICES - 1)
    sample = b"".join(data[i * step:i * step + SAMPLE_SLICE] for i in range(SAMPLE_SLICES))
    return len(_compressor(1, False).compress(sample)) / len(sample)


def is_incompressible(data: bytes | bytearray | memoryview) -> bool:
    """Probe: do SAMPLE_SLICES slices of `data`, compressed at level 1, shrink by < 3 %?"""
    ratio = probe_ratio(data)
    return ratio is not None and ratio > INCOMPRESSIBLE_RATIO


def _binary_compressor() -> zstandard.ZstdCompressor:
    """Level 3's ratio on partly compressible binary data (raw sensor data), ~30 % faster.

    zstd's level 3 (``dfast``) spends its time on a second hash table that pays on text,
    not on sensor samples; the single-table ``fast`` finder with 5-byte matches and
    level 3's table sizes compresses them as well (docs/band-format.md has the numbers).
    """
    c = _local.__dict__.get("binary")
    if c is None:
        params = zstandard.ZstdCompressionParameters(
            strategy=zstandard.STRATEGY_FAST, window_log=21, hash_log=17, chain_log=16,
            search_log=1, min_match=5, write_checksum=1, write_content_size=1,
        )
        c = _local.binary = zstandard.ZstdCompressor(compression_params=params)
    return c


def _compress_frame(data: bytes | bytearray | memoryview, level: int) -> tuple[bytes, int]:
    if level > CHEAP_LEVEL:
        ratio = probe_ratio(data)
        if ratio is not None and ratio > INCOMPRESSIBLE_RATIO:
            level = CHEAP_LEVEL
        elif level == DEFAULT_LEVEL and ratio is not None and ratio > TEXT_LIKE_RATIO:
            return _binary_compressor().compress(data), level
    return _compressor(level).compress(data), level


def decompress_frames(data: bytes | memoryview, frames: Sequence[Frame]) -> bytes:
    """Decompress consecutive `frames` whose compressed bytes are `data` (starting at
    frames[0].compressed_offset). Each frame must carry a content checksum and decode to
    exactly its stated size; anything else raises CorruptionError."""
    return b"".join(_decompress_each(data, frames))


def _decompress_each(data: bytes | memoryview, frames: Sequence[Frame]) -> list[bytes]:
    view, pos, out = memoryview(data), 0, []
    for f in frames:
        piece = view[pos:pos + f.compressed_size]
        pos += f.compressed_size
        try:
            if len(piece) != f.compressed_size:
                raise CorruptionError("truncated frame")
            params = zstandard.get_frame_parameters(piece)
            if not params.has_checksum or params.content_size != f.uncompressed_size:
                raise CorruptionError("frame header does not match the seek table")
            chunk = _decompressor().decompress(piece, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise CorruptionError(f"zstd frame at {f.compressed_offset}: {e}") from e
        if len(chunk) != f.uncompressed_size:
            raise CorruptionError(f"zstd frame at {f.compressed_offset}: wrong size")
        out.append(chunk)
    return out


# --- seek table ------------------------------------------------------------------------


def encode_seek_table(frames: Sequence[Frame]) -> bytes:
    """The seek table as a skippable frame (no per-entry checksums)."""
    payload = b"".join(_ENTRY.pack(f.compressed_size, f.uncompressed_size) for f in frames)
    payload += _FOOTER.pack(len(frames), 0, SEEKABLE_MAGIC)
    return struct.pack("<II", SKIPPABLE_MAGIC, len(payload)) + payload


def seek_table_length(tail: bytes) -> int:
    """Bytes of the whole seek-table frame, from the last >= 9 bytes of a band."""
    if len(tail) < _FOOTER.size:
        raise CorruptionError("band too short for a seek table")
    n, descriptor, magic = _FOOTER.unpack(tail[-_FOOTER.size:])
    if magic != SEEKABLE_MAGIC or descriptor & 0x7C:
        raise CorruptionError("no seek table at the end of the band")
    return 8 + n * (12 if descriptor & 0x80 else 8) + _FOOTER.size


def read_seek_table(tail: bytes) -> tuple[Frame, ...]:
    """Parse the seek table from the last bytes of a band; `tail` must hold at least
    `seek_table_length(tail)` bytes (else CorruptionError)."""
    length = seek_table_length(tail)
    if len(tail) < length:
        raise CorruptionError(f"seek table needs {length} bytes, got {len(tail)}")
    table = tail[len(tail) - length:]
    magic, payload = struct.unpack_from("<II", table)
    n, descriptor, _ = _FOOTER.unpack(table[-_FOOTER.size:])
    if magic != SKIPPABLE_MAGIC or payload != length - 8:
        raise CorruptionError("bad seek table frame header")
    step = 12 if descriptor & 0x80 else 8
    frames, coff, uoff = [], 0, 0
    for i in range(n):
        csize, usize = _ENTRY.unpack_from(table, 8 + i * step)
        if csize == 0:
            raise CorruptionError("empty frame in seek table")
        frames.append(Frame(coff, csize, uoff, usize))
        coff, uoff = coff + csize, uoff + usize
    return tuple(frames)


def frames_for_range(frames: Sequence[Frame], offset: int, length: int) -> Sequence[Frame]:
    """The consecutive frames covering [offset, offset+length) of the uncompressed stream
    (empty for length 0). ValueError if the range is not inside the stream."""
    if length == 0:
        return ()
    end = frames[-1].uncompressed_offset + frames[-1].uncompressed_size if frames else 0
    if offset < 0 or length < 0 or offset + length > end:
        raise ValueError(f"range {offset}+{length} outside stream of {end} bytes")
    first = bisect.bisect_right(frames, offset, key=lambda f: f.uncompressed_offset) - 1
    last = bisect.bisect_left(frames, offset + length, key=lambda f: f.uncompressed_offset)
    return frames[first:last]


# --- writer ----------------------------------------------------------------------------


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
    the writer is unusable.
    """

    def __init__(self, path: Path, band_id: str, *, level: int = 3,
                 frame_size: int = FRAME_SIZE_DEFAULT, threads: int = 2) -> None:
        if not 0 < frame_size <= FRAME_SIZE_MAX:
            raise ValueError(f"frame_size must be in (0, {FRAME_SIZE_MAX}]")
        self.path, self.band_id, self.level, self.frame_size = path, band_id, level, frame_size
        self._file = BandFile(path)  # owned until close/abort; O_DIRECT where possible
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="band-zstd")
        # Frames compressed but not yet written are bounded (memory); a writer thread
        # writes and hashes them in order, so the caller's thread only reads and packs.
        self._slots = threading.Semaphore(max(1, threads) + FRAMES_AHEAD)
        self._queue: queue.Queue[tuple[Future[tuple[bytes, int]], int, int] | None] = (
            queue.Queue())
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
        self._open = True
        self._closed = False  # close() succeeded: the file is a finished band
        self._writer = threading.Thread(target=self._write_loop, name="band-writer", daemon=True)
        self._writer.start()

    @property
    def uncompressed_size(self) -> int:
        """Tar bytes written so far."""
        return self._submitted + self._fill

    def add_blob(
        self, name: bytes, meta: MemberMeta, data: bytes | memoryview, sha256: bytes
    ) -> BlobLocation:
        """Append a member with `data`, whose SHA-256 the caller computed (not re-checked)."""
        self._check(name, sha256)
        self._append(member_header(name, meta, len(data)))
        loc = BlobLocation(sha256, self.uncompressed_size, len(data))
        self._append(data)
        self._append(b"\0" * (-len(data) % _BLOCK))
        return self._remember(name, loc)

    def add_blob_stream(self, name: bytes, meta: MemberMeta, size: int, read: ReadInto,
                        sha256: bytes | None = None, *,
                        skip_if: Callable[[bytes], bool] | None = None) -> BlobLocation | None:
        """Append a member of `size` bytes that `read` fills in; its content starts a frame.

        `read(view, offset)` fills `view` with content from `offset` and returns how many
        bytes it wrote (0 at the end); it reads straight into the frame buffer, and each
        piece is hashed while it is still in the CPU cache. If the content is not exactly
        `size` bytes (or hashes differently from a given `sha256`, or `read` raises), the
        band is rolled back to before this member and ContentChanged (or the error) is
        raised. With `skip_if`, a member whose SHA-256 it accepts (a blob the vault already
        has) is rolled back too and None is returned: one read of a large file serves both
        the dedup decision and the band. The writer stays usable either way.
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
                piece = memoryview(self._buf)[self._fill:self._fill + want]
                got = read(piece, n)
                if got == 0:
                    break
                h.update(piece[:got])
                self._fill += got
                n += got
            digest = h.digest()
            if n != size or read(memoryview(bytearray(1)), n) != 0 \
                    or (sha256 is not None and digest != sha256):
                raise ContentChanged(f"{name!r}: size or SHA-256 changed while reading")
            if skip_if is not None and skip_if(digest):
                self._rollback(cp)
                return None
            self._append(b"\0" * (-size % _BLOCK))
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
        clash = {"format", "band", "blobs", "body_sha256"} & extra.keys()
        if clash:
            raise ValueError(f"extra keys clash with band keys: {sorted(clash)}")
        self._flush()
        self._drain()
        self._buf, self._spare = bytearray(), []  # frame buffers are not needed any more
        catalog = self._catalog_json(extra)
        meta = MemberMeta(0o644, 0, 0, time.time_ns() // 10**9 * 10**9)
        header = member_header(CATALOG_MEMBER.encode(), meta, len(catalog))
        padding = b"\0" * (-len(catalog) % _BLOCK + 2 * _BLOCK)
        if len(header) + len(catalog) + len(padding) > FRAME_SIZE_MAX:
            raise ValueError("catalog too large for one frame")
        last = bytearray(header)  # one copy of the catalog, not three (peak memory)
        last += catalog
        last += padding
        self._submit(last, len(last))
        self._drain()
        self._stop_writer()
        table = encode_seek_table(self._frames)
        self._file.write(table)
        self._hasher.update(table)
        self._file.finish(sync=sync)
        self._pool.shutdown()
        self._open = False
        if sync:
            fsync_path(self.path.parent)
        band = ClosedBand(self.band_id, self.path, self._written + len(table),
                          self._hasher.digest(), tuple(self._frames), tuple(self._blobs), catalog,
                          self._submitted, tuple(self._levels))
        _verify_written(band)
        self._closed = True
        return band

    def _catalog_json(self, extra: dict[str, Any]) -> bytes:
        """The catalog document, exactly as ``json.dumps(doc, ensure_ascii=True,
        sort_keys=True, separators=(",", ":"))`` writes it; the blob list (tens of
        thousands of entries in a band of small files) is written directly instead of
        through one dict per blob."""
        marker = "\x00blobs\x00"
        doc = {"format": CATALOG_FORMAT, "band": self.band_id, "blobs": marker,
               "body_sha256": self._hasher.hexdigest(), **extra}
        text = json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
        quote = json.encoder.encode_basestring_ascii
        blobs = "[" + ",".join(
            f'{{"name":{quote(nm)},"offset":{b.offset},"sha256":"{b.sha256.hex()}",'
            f'"size":{b.size}}}'
            for b, nm in zip(self._blobs, self._names, strict=True)
        ) + "]"
        return text.replace(json.dumps(marker), blobs, 1).encode("ascii")

    def abort(self) -> None:
        """Stop the compression threads and delete the file, unless `close` succeeded.
        Idempotent."""
        if self._closed:
            return
        if self._open:
            self._open = False
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._stop_writer()
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
            self._buf[self._fill:self._fill + take] = view[:take]
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
        self._submit(buf, n, recycle=True)

    def _submit(self, buf: bytearray, n: int, *, recycle: bool = False) -> None:
        """Compress ``buf[:n]`` in the pool as the next frame; the writer thread writes it."""
        self._raise_writer_error()
        # The slots bound the frames between here and the disk. While none is free
        # (zstd is behind), the caller may do other work instead of waiting.
        while not self._slots.acquire(blocking=False):
            if self.on_stall is None or not self.on_stall():
                self._slots.acquire()
                break
        fut = self._pool.submit(self._compress, buf, n, recycle)
        self._queue.put((fut, self._submitted, n))
        self._submitted += n
        self._frames_submitted += 1

    def _compress(self, buf: bytearray, n: int, recycle: bool) -> tuple[bytes, int]:
        """A pool thread: compress one frame, then give its buffer back for reuse."""
        try:
            return _compress_frame(memoryview(buf)[:n], self.level)
        finally:
            if recycle and self._open:
                self._spare.append(buf)

    def _write_loop(self) -> None:
        """The writer thread: frames in order → file, band SHA-256, seek table entries."""
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                fut, uoff, usize = item
                try:
                    data, level = fut.result()
                    if self._writer_error is None:
                        with self._state:  # the caller's thread copies the hasher at checkpoints
                            self._file.write(data, self._hasher)
                            self._frames.append(Frame(self._written, len(data), uoff, usize))
                            self._levels.append(level)
                            self._written += len(data)
                            cp = self._checkpoint
                            if cp is not None and cp.written is None \
                                    and len(self._frames) == cp.frames:
                                cp.written, cp.hasher = self._written, self._hasher.copy()
                        if len(self._frames) % TRIM_EVERY_FRAMES == 0:
                            release_free_memory()
                except BaseException as e:  # handed to the caller's thread
                    if self._writer_error is None:
                        self._writer_error = e
                finally:
                    item = fut = data = None  # type: ignore[assignment]  # free the frame now
                    self._slots.release()
            finally:
                self._queue.task_done()

    def _raise_writer_error(self) -> None:
        if self._writer_error is not None:
            raise self._writer_error

    def _drain(self) -> None:
        """Wait until every frame handed over is written."""
        self._queue.join()
        self._raise_writer_error()

    def _stop_writer(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()

    def _rollback(self, cp: _Checkpoint) -> None:
        """Forget a member: wait for the writer, then cut the file back to the checkpoint."""
        self._queue.join()  # the member's frames are written too; they are cut off below
        self._fill = 0
        assert cp.written is not None
        self._file.truncate(cp.written)
        with self._state:
            del self._frames[cp.frames:], self._levels[cp.frames:]
            self._written, self._hasher = cp.written, cp.hasher
        self._submitted, self._frames_submitted = cp.uncompressed, cp.frames


def sync_band(path: Path) -> None:
    """Make a band closed with ``sync=False`` durable (its data; not its directory entry)."""
    fsync_path(path)


def _check_frames(frames: tuple[Frame, ...], size: int, label: str | None) -> None:
    last = frames[-1] if frames else None
    if last is None or last.compressed_offset + last.compressed_size + 17 + 8 * len(frames) != size:
        where = f"band {label}: " if label is not None else ""
        raise CorruptionError(f"{where}frames do not match the band's size")


PREFETCH_THREADS = 2


@functools.cache
def prefetcher() -> ThreadPoolExecutor:
    """The threads of `BandReader.prefetch` (shared by every reader; made on first use)."""
    return ThreadPoolExecutor(max_workers=PREFETCH_THREADS, thread_name_prefix="band-prefetch")


def _verify_written(band: ClosedBand) -> None:
    """Re-read the seek table and catalog from the file and compare (restic's verifyHeader)."""
    with open(band.path, "rb") as f:
        def read_range(start: int, length: int) -> bytes:
            f.seek(start)
            return f.read(length)

        reader = BandReader(read_range, os.fstat(f.fileno()).st_size, label=band.band_id)
        if (reader.size != band.size or reader.frames != band.frames
                or reader.catalog_bytes != band.catalog):
            raise CorruptionError(f"band {band.band_id}: file does not read back as written")


# --- reader ----------------------------------------------------------------------------


class BandReader:
    """Random access to one band through `read_range(start, length) -> bytes` (a local file or
    ranged GETs). The seek table (unless `frames` is given, e.g. from the sidecar) and the
    catalog are loaded lazily from the tail: one read of TAIL_READ bytes usually gets both.
    Every byte returned has passed its frame's zstd checksum; blobs also their SHA-256.
    Structural or checksum failures raise CorruptionError naming the band (`label`).
    """

    def __init__(self, read_range: Callable[[int, int], bytes], size: int,
                 frames: tuple[Frame, ...] | None = None, *, label: str = "?",
                 cache_bytes: int = FRAME_CACHE_BYTES) -> None:
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
            _check_frames(self._frames, self.size, self.label)
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

    def prefetch(self, index: int) -> None:
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
        prefetcher().submit(self._fill, f, future)

    def _fill(self, f: Frame, future: Future[bytes]) -> None:
        try:
            data = self._read(f.compressed_offset, f.compressed_size)
            piece = _decompress_each(data, (f,))[0]
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
            try:
                doc = json.loads(self.catalog_bytes)
            except ValueError as e:
                raise CorruptionError(f"band {self.label}: catalog is not JSON: {e}") from e
            if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
                raise CorruptionError(f"band {self.label}: unknown catalog format")
            self._catalog = doc
        return self._catalog

    def blobs(self) -> tuple[tuple[str, BlobLocation], ...]:
        """(member name, location) of every blob listed in the catalog."""
        try:
            return tuple((b["name"], BlobLocation(bytes.fromhex(b["sha256"]), b["offset"],
                                                  b["size"])) for b in self.catalog["blobs"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptionError(f"band {self.label}: bad catalog entry: {e}") from e

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
            group = frames[i:i + max(1, chunk_frames)]
            data = self._decompress(group)
            base = group[0].uncompressed_offset
            piece = data[max(start - base, 0):end - base]
            h.update(piece)
            if i + len(group) >= len(frames) and h.digest() != loc.sha256:
                raise CorruptionError(
                    f"band {self.label}: blob {loc.sha256.hex()} at {loc.offset} fails SHA-256")
            yield piece

    def read_uncompressed(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the tar stream, clipped at its end (like pread)."""
        length = max(0, min(length, self.uncompressed_size - offset))
        frames = frames_for_range(self.frames, offset, length)
        if not frames:
            return b""
        base = frames[0].uncompressed_offset
        return self._decompress(frames)[offset - base:offset - base + length]

    def read_view(self, offset: int, length: int) -> bytes | memoryview:
        """Like `read_uncompressed`, but a range inside one frame comes back as a read-only
        view of the (cached, immutable) decompressed frame: no copy."""
        length = max(0, min(length, self.uncompressed_size - offset))
        frames = frames_for_range(self.frames, offset, length)
        if len(frames) != 1:
            return self.read_uncompressed(offset, length)
        base = frames[0].uncompressed_offset
        return memoryview(self._decompress(frames))[offset - base:offset - base + length]

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
        return memoryview(data)[offset - base:offset - base + length]

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
            underway = [(i, self._pending.get(f.compressed_offset))
                        for i, (f, c) in enumerate(zip(frames, cached, strict=True)) if c is None]
        for i, future in underway:
            if future is not None:  # being prefetched: wait for it rather than decompress twice
                cached[i] = future.result()
        missing = [f for f, c in zip(frames, cached, strict=True) if c is None]
        if missing:
            first, last = missing[0], missing[-1]
            span = [f for f in frames
                    if first.compressed_offset <= f.compressed_offset <= last.compressed_offset]
            start = first.compressed_offset
            data = self._read(start, last.compressed_offset + last.compressed_size - start)
            try:
                pieces = _decompress_each(data, span)
            except CorruptionError as e:
                raise CorruptionError(f"band {self.label}: {e.message}") from e
            fresh = {f.compressed_offset: p for f, p in zip(span, pieces, strict=True)}
            cached = [c if c is not None else fresh[f.compressed_offset]
                      for f, c in zip(frames, cached, strict=True)]
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
            if not frames or frames[-1].compressed_offset + frames[-1].compressed_size + need \
                    != self.size:
                raise CorruptionError("seek table does not match the band's size")
            self._frames = frames
        _check_frames(self._frames, self.size, None)
        last = self._frames[-1]
        if last.compressed_offset >= tail_start:
            rel = last.compressed_offset - tail_start
            data = tail[rel:rel + last.compressed_size]
        else:
            data = self._read(last.compressed_offset, last.compressed_size)
        stream = decompress_frames(data, (last,))
        try:
            name, pos, size = _parse_member(stream)
        except (ValueError, IndexError) as e:
            raise CorruptionError(f"bad catalog member header: {e}") from e
        if name != CATALOG_MEMBER.encode() or stream[pos + size:] != bytes(
                len(stream) - pos - size) or len(stream) - pos - size < 2 * _BLOCK:
            raise CorruptionError("last frame is not the catalog and end of archive")
        self._catalog_bytes = stream[pos:pos + size]


# --- sidecar and ids -------------------------------------------------------------------


def encode_sidecar(band: ClosedBand) -> bytes:
    """zstd-compressed JSON: the catalog's keys plus band_size, band_sha256 and frames
    ([[compressed_size, uncompressed_size], ...], the seek table's entries)."""
    doc = json.loads(band.catalog)
    doc.update(band_size=band.size, band_sha256=band.sha256.hex(),
               frames=[[f.compressed_size, f.uncompressed_size] for f in band.frames])
    text = json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return _compressor(3).compress(text.encode("ascii"))


def decode_sidecar(data: bytes) -> dict[str, Any]:
    """Parse a sidecar; CorruptionError when it does not decompress, verify or parse."""
    try:
        doc = json.loads(_decompressor().decompress(data, allow_extra_data=False))
        if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
            raise ValueError("not a band sidecar")
        sidecar_frames(doc)
    except (zstandard.ZstdError, ValueError, UnicodeDecodeError) as e:
        raise CorruptionError(f"bad band sidecar: {e}") from e
    return doc


def sidecar_frames(doc: dict[str, Any]) -> tuple[Frame, ...]:
    """The frames listed in a decoded sidecar (ValueError if malformed)."""
    frames, coff, uoff = [], 0, 0
    try:
        for csize, usize in doc["frames"]:
            if not (isinstance(csize, int) and isinstance(usize, int) and csize > 0 and usize >= 0):
                raise ValueError("bad frame entry")
            frames.append(Frame(coff, csize, uoff, usize))
            coff, uoff = coff + csize, uoff + usize
    except (KeyError, TypeError) as e:
        raise ValueError(f"bad frames: {e}") from e
    return tuple(frames)


def new_band_id(now: datetime | None = None) -> str:
    """'YYYYMMDDTHHMMSSZ-<8 random hex>': sorts by creation time (UTC; naive means UTC)."""
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is not None:
        now = now.astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


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
            band_id=band_id, path=path, size=size, sha256=h.digest(), frames=reader.frames,
            blobs=blobs, catalog=reader.catalog_bytes,
            uncompressed_size=reader.uncompressed_size,
        )


# --- salvage: reading a damaged band front to back ---------------------------------------

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # 0xFD2FB528 little endian: every zstd frame starts with it
_SKIPPABLE_MASK = 0xFFFFFFF0
_MAX_PAX = 1 << 20  # a pax header larger than this is taken for garbage when resynchronising


@dataclass(frozen=True, slots=True)
class SalvagedMember:
    """One tar member found by `salvage_members`: `sha256` None when part of its content
    lies in a damaged frame (its bytes are lost)."""

    name: bytes
    offset: int  # of the content in the uncompressed tar stream
    size: int
    sha256: bytes | None
    content: bytes | None = None  # kept only for the catalog member


def zstd_frame_size(data: bytes | memoryview | mmap.mmap, pos: int) -> int:
    """The compressed size of the zstd frame starting at `data[pos]`, from its header and
    block headers (nothing is decompressed). ValueError when it is not a well-formed frame
    that ends inside `data`. Used to find frame boundaries when the seek table is gone."""
    end = len(data)
    if bytes(data[pos:pos + 4]) != ZSTD_MAGIC or pos + 6 > end:
        raise ValueError("no zstd frame magic")
    fhd = data[pos + 4]
    if fhd & 0x08:
        raise ValueError("reserved bit set in the frame header")
    fcs_flag, single, checksum, dict_flag = fhd >> 6, fhd >> 5 & 1, fhd >> 2 & 1, fhd & 3
    p = pos + 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + (
        (1 if single else 0), 2, 4, 8)[fcs_flag]
    while True:
        if p + 3 > end:
            raise ValueError("frame runs past the end of the data")
        head = int.from_bytes(data[p:p + 3], "little")
        last, kind, size = head & 1, head >> 1 & 3, head >> 3
        if kind == 3:
            raise ValueError("reserved block type")
        p += 3 + (1 if kind == 1 else size)
        if last:
            break
    p += 4 if checksum else 0
    if p > end:
        raise ValueError("frame runs past the end of the data")
    return p - pos


def salvage_frames(data: bytes | memoryview | mmap.mmap) -> tuple[tuple[Frame, ...], list[str]]:
    """The frames of a whole band file (`data`: its bytes, or an mmap of it), and why the
    seek table was not used. Frame boundaries come from the seek table when it is intact
    and agrees with the file's size; otherwise from walking the frames' own headers,
    resynchronising at the next zstd frame magic after a frame whose structure is broken.
    Such a frame has uncompressed size -1, and so has every frame after it (their place
    in the tar stream is unknown: `salvage_members` stops there)."""
    size = len(data)
    try:
        frames = read_seek_table(bytes(data[max(0, size - TAIL_READ):]))
        _check_frames(frames, size, None)
        return frames, []
    except CorruptionError as e:
        problems = [f"seek table unusable ({e.message}): frames found by their headers"]
    return _walk_frames(data, problems), problems


def _walk_frames(raw: bytes | memoryview | mmap.mmap, problems: list[str]) -> tuple[Frame, ...]:
    size, pos, uoff = len(raw), 0, 0
    frames: list[Frame] = []
    find = bytes(raw).find if isinstance(raw, memoryview) else raw.find
    while pos < size:
        magic = int.from_bytes(raw[pos:pos + 4], "little") if pos + 4 <= size else 0
        if magic & _SKIPPABLE_MASK == SKIPPABLE_MAGIC & _SKIPPABLE_MASK and pos + 8 <= size \
                and pos + 8 + int.from_bytes(raw[pos + 4:pos + 8], "little") == size:
            break  # the seek table (or what is left of it) ends the band
        try:
            csize = zstd_frame_size(raw, pos)
            usize = zstandard.frame_content_size(bytes(raw[pos:pos + 18]))
            if usize < 0:
                raise ValueError("frame header states no content size")
        except (ValueError, zstandard.ZstdError):
            nxt = find(ZSTD_MAGIC, pos + 1)
            end = size if nxt < 0 else nxt
            frames.append(Frame(pos, end - pos, -1, -1))
            uoff, pos = -1, end
            continue
        frames.append(Frame(pos, csize, uoff, usize if uoff >= 0 else -1))
        if uoff >= 0:
            uoff += usize
        pos += csize
    if any(f.uncompressed_size < 0 for f in frames):
        problems.append("a broken frame hides where the rest of the tar stream lies")
    return tuple(frames)


def salvage_frame_prefix(frame: bytes) -> bytes:
    """What a damaged frame still decompresses to, unverified: its checksum is ignored
    and decoding stops at the first error. Only for content that carries its own proof
    (the trees of a damaged catalog, each checked against its id); never served."""
    raw = bytearray(frame)
    if bytes(raw[:4]) == ZSTD_MAGIC and len(raw) > 4 and raw[4] & 0x04:
        try:
            end = zstd_frame_size(bytes(raw), 0)
            raw[4] &= ~0x04 & 0xFF
            del raw[end - 4:end]
        except ValueError:
            pass  # structure broken: decode what comes before the break
    out: list[bytes] = []
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bytes(raw))) as reader:
            while chunk := reader.read(1 << 16):
                out.append(chunk)
    except zstandard.ZstdError:
        pass
    return b"".join(out)


def salvage_members(data: bytes | memoryview | mmap.mmap, frames: Sequence[Frame],
                    problems: list[str]) -> Iterator[SalvagedMember]:
    """Every tar member of a band's stream whose header can be read, with its content
    re-hashed; members whose content touches a damaged frame come back with `sha256`
    None. Frames are decompressed one at a time (memory stays at one frame). After damage
    the walk resynchronises at the next 512-byte block of the stream that holds a
    checksum-valid tar header, so members after a damaged frame are found. Damaged
    frames are described in `problems`."""
    walker = _TarWalker()
    for f in frames:
        if f.uncompressed_offset < 0 or f.uncompressed_size < 0:
            problems.append(f"bytes {f.compressed_offset}-{f.compressed_offset + f.compressed_size}"
                            " are not a readable zstd frame; the stream after them is lost")
            break  # the stream's positions are unknown from here on
        try:
            piece = _decompress_each(data[f.compressed_offset:f.compressed_offset
                                          + f.compressed_size], (f,))[0]
        except CorruptionError as e:
            problems.append(f"frame at byte {f.compressed_offset} is damaged: {e.message}")
            yield from walker.hole(f.uncompressed_offset + f.uncompressed_size)
            continue
        yield from walker.feed(f.uncompressed_offset, piece)
    yield from walker.finish()


def _header_span(block: bytes) -> int:
    """How many bytes the member header starting with `block` takes (a pax header, its
    records and the ustar header after it; or one block); 0 when `block` is not a
    checksum-valid tar header."""
    try:
        if int(block[148:156].strip(b"\0 ") or b"-1", 8) != sum(block[:148]) + 256 + sum(block[156:]):
            return 0
        size = int(block[124:136].strip(b"\0 ") or b"0", 8)
    except ValueError:
        return 0
    if block[156:157] != b"x":
        return _BLOCK
    if not 0 < size <= _MAX_PAX:
        return 0
    return 2 * _BLOCK + size + (-size % _BLOCK)


class _TarWalker:
    """Streaming tar parser over pieces of the uncompressed stream with holes in it."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.base = 0  # stream position of buf[0]
        self.next_header = 0
        self.member: tuple[bytes, int, int] | None = None  # name, content offset, size
        self.hasher: Any = None
        self.damaged = False
        self.kept: list[bytes] = []

    def hole(self, end: int) -> Iterator[SalvagedMember]:
        """The stream up to `end` is unreadable."""
        self.buf.clear()
        self.base = end
        if self.member is not None:
            _, off, size = self.member
            self.damaged = True
            if off + size <= end:
                yield self._done()
        self.next_header = max(self.next_header, -(-end // _BLOCK) * _BLOCK)

    def feed(self, offset: int, data: bytes) -> Iterator[SalvagedMember]:
        if offset != self.base + len(self.buf):
            yield from self.hole(offset)
        self.buf += data
        while True:
            if self.member is not None:
                name, off, size = self.member
                end = off + size
                start = max(off, self.base)
                stop = min(end, self.base + len(self.buf))
                if stop > start:
                    piece = bytes(self.buf[start - self.base:stop - self.base])
                    if not self.damaged:
                        self.hasher.update(piece)
                        if name == CATALOG_MEMBER.encode():
                            self.kept.append(piece)
                if stop < end:
                    self._drop(stop)
                    return
                yield self._done()
                continue
            hp = self.next_header
            if hp < self.base:
                hp = self.next_header = -(-self.base // _BLOCK) * _BLOCK
            rel, avail = hp - self.base, self.base + len(self.buf) - hp
            if avail < _BLOCK:  # wait for more of the stream
                self._drop(hp)
                return
            need = _header_span(bytes(self.buf[rel:rel + _BLOCK]))
            if need == 0:
                self.next_header = hp + _BLOCK  # not a header: resynchronise at the next block
                continue
            if avail < need:  # wait for more of the stream
                self._drop(hp)
                return
            try:
                name, pos, size = _parse_member(bytes(self.buf[rel:rel + need]))
            except (ValueError, IndexError):
                self.next_header = hp + _BLOCK
                continue
            self.member = (name, hp + pos, size)
            self.hasher, self.damaged, self.kept = hashlib.sha256(), False, []

    def finish(self) -> Iterator[SalvagedMember]:
        if self.member is not None:
            self.damaged = True
            yield self._done()

    def _done(self) -> SalvagedMember:
        assert self.member is not None
        name, off, size = self.member
        self.member = None
        self.next_header = off + size + (-size % _BLOCK)
        content = b"".join(self.kept) if name == CATALOG_MEMBER.encode() and not self.damaged \
            else None
        return SalvagedMember(name, off, size, None if self.damaged else self.hasher.digest(),
                              content)

    def _drop(self, upto: int) -> None:
        n = max(0, min(upto - self.base, len(self.buf)))
        if n:
            del self.buf[:n]
            self.base += n
