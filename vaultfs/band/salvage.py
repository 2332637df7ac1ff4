"""Salvage: reading a damaged band front to back, without trusting its seek table.

`vaultfs index rebuild` uses this when a band's tail or one of its frames is damaged
(docs/recovery.md, docs/band-format.md): frame boundaries come from the seek table when
it is intact, else from the zstd frames' own headers (resynchronising at the next frame
magic after a broken one); the tar stream is walked frame by frame, and after a hole
the walk resynchronises at the next checksum-valid tar header on a 512-byte boundary.
Every member comes back with the SHA-256 of its content, or None when part of it lies
in a damaged frame: members before and after the damage are recovered, exactly those
that overlap it are lost. Nothing here is ever served: salvaged content is only used
once its hash matches what a catalog (or the blob id) says.
"""

from __future__ import annotations

import hashlib
import io
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard

from vaultfs.band.catalog import CATALOG_MEMBER
from vaultfs.band.frames import (
    SKIPPABLE_MAGIC,
    Frame,
    check_frames,
    decompress_each,
    read_seek_table,
)
from vaultfs.band.reader import TAIL_READ
from vaultfs.band.tar import BLOCK, MapGoesOn, parse_member
from vaultfs.errors import CorruptionError

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
    if bytes(data[pos : pos + 4]) != ZSTD_MAGIC or pos + 6 > end:
        raise ValueError("no zstd frame magic")
    fhd = data[pos + 4]
    if fhd & 0x08:
        raise ValueError("reserved bit set in the frame header")
    fcs_flag, single, checksum, dict_flag = fhd >> 6, fhd >> 5 & 1, fhd >> 2 & 1, fhd & 3
    p = pos + 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
    while True:
        if p + 3 > end:
            raise ValueError("frame runs past the end of the data")
        head = int.from_bytes(data[p : p + 3], "little")
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
        frames = read_seek_table(bytes(data[max(0, size - TAIL_READ) :]))
        check_frames(frames, size, None)
        return frames, []
    except CorruptionError as e:
        problems = [f"seek table unusable ({e.message}): frames found by their headers"]
    return _walk_frames(data, problems), problems


def _walk_frames(raw: bytes | memoryview | mmap.mmap, problems: list[str]) -> tuple[Frame, ...]:
    size, pos, uoff = len(raw), 0, 0
    frames: list[Frame] = []
    find = bytes(raw).find if isinstance(raw, memoryview) else raw.find
    while pos < size:
        magic = int.from_bytes(raw[pos : pos + 4], "little") if pos + 4 <= size else 0
        if (
            magic & _SKIPPABLE_MASK == SKIPPABLE_MAGIC & _SKIPPABLE_MASK
            and pos + 8 <= size
            and pos + 8 + int.from_bytes(raw[pos + 4 : pos + 8], "little") == size
        ):
            break  # the seek table (or what is left of it) ends the band
        try:
            csize = zstd_frame_size(raw, pos)
            usize = zstandard.frame_content_size(bytes(raw[pos : pos + 18]))
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
            del raw[end - 4 : end]
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


def salvage_members(
    data: bytes | memoryview | mmap.mmap, frames: Sequence[Frame], problems: list[str]
) -> Iterator[SalvagedMember]:
    """Every tar member of a band's stream whose header can be read, with its content
    re-hashed; members whose content touches a damaged frame come back with `sha256`
    None. Frames are decompressed one at a time (memory stays at one frame). After damage
    the walk resynchronises at the next 512-byte block of the stream that holds a
    checksum-valid tar header, so members after a damaged frame are found. Damaged
    frames are described in `problems`."""
    walker = _TarWalker()
    for f in frames:
        if f.uncompressed_offset < 0 or f.uncompressed_size < 0:
            problems.append(
                f"bytes {f.compressed_offset}-{f.compressed_offset + f.compressed_size}"
                " are not a readable zstd frame; the stream after them is lost"
            )
            break  # the stream's positions are unknown from here on
        try:
            piece = decompress_each(
                data[f.compressed_offset : f.compressed_offset + f.compressed_size], (f,)
            )[0]
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
        return BLOCK
    if not 0 < size <= _MAX_PAX:
        return 0
    return 2 * BLOCK + size + (-size % BLOCK)


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
        self.next_header = max(self.next_header, -(-end // BLOCK) * BLOCK)

    def feed(self, offset: int, data: bytes) -> Iterator[SalvagedMember]:
        if offset != self.base + len(self.buf):
            yield from self.hole(offset)
        self.buf += data
        while True:
            if self.member is not None:
                if not self._take_content():
                    return  # the member goes on in the next piece
                yield self._done()
            elif not self._next_header():
                return  # wait for more of the stream

    def _take_content(self) -> bool:
        """Hash what the buffer holds of the current member's content; True once it is all
        there (else the buffer is emptied up to where the content stops)."""
        assert self.member is not None
        name, off, size = self.member
        end = off + size
        start = max(off, self.base)
        stop = min(end, self.base + len(self.buf))
        if stop > start:
            piece = bytes(self.buf[start - self.base : stop - self.base])
            if not self.damaged:
                self.hasher.update(piece)
                if name == CATALOG_MEMBER.encode():
                    self.kept.append(piece)
        if stop < end:
            self._drop(stop)
            return False
        return True

    def _next_header(self) -> bool:
        """Look for the next member header from `next_header` on; False when the buffer
        ends first (wait for more), True when a member started or a block was passed over."""
        hp = self.next_header
        if hp < self.base:
            hp = self.next_header = -(-self.base // BLOCK) * BLOCK
        rel, avail = hp - self.base, self.base + len(self.buf) - hp
        if avail < BLOCK:
            self._drop(hp)
            return False
        need = _header_span(bytes(self.buf[rel : rel + BLOCK]))
        if need == 0:
            self.next_header = hp + BLOCK  # not a header: resynchronise at the next block
            return True
        while True:
            if avail < need:
                self._drop(hp)
                return False
            try:
                name, pos, size = parse_member(bytes(self.buf[rel : rel + need]))
                break
            except MapGoesOn:  # a sparse member: its map follows the header, a block at a time
                need += BLOCK
            except (ValueError, IndexError):
                self.next_header = hp + BLOCK
                return True
        self.member = (name, hp + pos, size)
        self.hasher, self.damaged, self.kept = hashlib.sha256(), False, []
        return True

    def finish(self) -> Iterator[SalvagedMember]:
        if self.member is not None:
            self.damaged = True
            yield self._done()

    def _done(self) -> SalvagedMember:
        assert self.member is not None
        name, off, size = self.member
        self.member = None
        self.next_header = off + size + (-size % BLOCK)
        content = b"".join(self.kept) if name == CATALOG_MEMBER.encode() and not self.damaged else None
        return SalvagedMember(name, off, size, None if self.damaged else self.hasher.digest(), content)

    def _drop(self, upto: int) -> None:
        n = max(0, min(upto - self.base, len(self.buf)))
        if n:
            del self.buf[:n]
            self.base += n
