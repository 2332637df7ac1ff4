"""Frames: the zstd frames of a band, the seek table that lists them, and decoding them.

A band's bytes are independent zstd frames followed by the zstd seekable format's seek
table (a skippable frame): entries ``<u32 compressed_size, u32 decompressed_size>`` (no
checksums), footer ``<u32 frames, u8 descriptor=0, u32 0x8F92EAB1>``. Everything that
lists frames — the seek table, the sidecar's ``frames``, the vault's catalog
(``BandInfo.frames``) — turns its (compressed, uncompressed) size pairs into `Frame` with
`frames_from_sizes`, so offsets are computed one way only.

Decoding is strict: a frame must carry zstd's content checksum and a content size equal to
the seek table's, and decode to exactly that many bytes; anything else is CorruptionError.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import zstandard

from vaultfs.band.compression import decompressor
from vaultfs.errors import CorruptionError

FRAME_SIZE_MAX = 1 << 31  # seek table entries are u32; leave room for zstd's overhead
SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
_FOOTER = struct.Struct("<IBI")
_ENTRY = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class Frame:
    """One zstd frame: its bytes in the band file and in the uncompressed tar stream."""

    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int


def frames_from_sizes(sizes: Iterable[tuple[int, int]]) -> tuple[Frame, ...]:
    """The frames of a band whose frames have these (compressed, uncompressed) sizes, in
    order from the band's start (sizes are not checked here)."""
    frames = []
    coff = uoff = 0
    for csize, usize in sizes:
        frames.append(Frame(coff, csize, uoff, usize))
        coff += csize
        uoff += usize
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
    n, descriptor, magic = _FOOTER.unpack(tail[-_FOOTER.size :])
    if magic != SEEKABLE_MAGIC or descriptor & 0x7C:
        raise CorruptionError("no seek table at the end of the band")
    return 8 + int(n) * (12 if descriptor & 0x80 else 8) + _FOOTER.size


def read_seek_table(tail: bytes) -> tuple[Frame, ...]:
    """Parse the seek table from the last bytes of a band; `tail` must hold at least
    `seek_table_length(tail)` bytes (else CorruptionError)."""
    length = seek_table_length(tail)
    if len(tail) < length:
        raise CorruptionError(f"seek table needs {length} bytes, got {len(tail)}")
    table = tail[len(tail) - length :]
    magic, payload = struct.unpack_from("<II", table)
    n, descriptor, _ = _FOOTER.unpack(table[-_FOOTER.size :])
    if magic != SKIPPABLE_MAGIC or payload != length - 8:
        raise CorruptionError("bad seek table frame header")
    step = 12 if descriptor & 0x80 else 8
    sizes = [_ENTRY.unpack_from(table, 8 + i * step) for i in range(n)]
    if any(csize == 0 for csize, _ in sizes):
        raise CorruptionError("empty frame in seek table")
    return frames_from_sizes(sizes)


def check_frames(frames: tuple[Frame, ...], size: int, label: str | None) -> None:
    """CorruptionError unless `frames` and their seek table make up a band of `size` bytes
    (`label`, if given, names the band in the message)."""
    last = frames[-1] if frames else None
    if last is None or last.compressed_offset + last.compressed_size + 17 + 8 * len(frames) != size:
        where = f"band {label}: " if label is not None else ""
        raise CorruptionError(f"{where}frames do not match the band's size")


# --- decoding --------------------------------------------------------------------------


def decompress_frames(data: bytes | memoryview, frames: Sequence[Frame]) -> bytes:
    """Decompress consecutive `frames` whose compressed bytes are `data` (starting at
    frames[0].compressed_offset). Each frame must carry a content checksum and decode to
    exactly its stated size; anything else raises CorruptionError."""
    return b"".join(decompress_each(data, frames))


def decompress_each(data: bytes | memoryview, frames: Sequence[Frame]) -> list[bytes]:
    """Like `decompress_frames`, but one piece per frame (a reader caches them by frame)."""
    view, pos, out = memoryview(data), 0, []
    for f in frames:
        piece = view[pos : pos + f.compressed_size]
        pos += f.compressed_size
        try:
            if len(piece) != f.compressed_size:
                raise CorruptionError("truncated frame")
            params = zstandard.get_frame_parameters(piece)
            if not params.has_checksum or params.content_size != f.uncompressed_size:
                raise CorruptionError("frame header does not match the seek table")
            chunk = decompressor().decompress(piece, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise CorruptionError(f"zstd frame at {f.compressed_offset}: {e}") from e
        if len(chunk) != f.uncompressed_size:
            raise CorruptionError(f"zstd frame at {f.compressed_offset}: wrong size")
        out.append(chunk)
    return out
