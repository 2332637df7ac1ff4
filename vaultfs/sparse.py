"""Sparse files: a file's data map and the arithmetic on it (no I/O here).

A sparse file is kept as its *data map* — the (offset, length) extents that hold data,
in order, not touching, inside the file's size — and a blob that is the content of
those extents concatenated (docs/snapshots.md#sparse-files). Everything else of the
file reads as zeros. Byte ``k`` of the blob is at file offset ``offset + (k - start)``
of the extent it falls in; `pieces` walks a range of the file through that mapping,
`holes` is the complement of a map.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence

Extents = tuple[tuple[int, int], ...]  # (offset, length) of each data extent, in order

MAX_EXTENTS = 4096  # more are merged across their smallest holes (`tidy`)
ALIGN = 512  # a tar block


def data_size(extents: Extents) -> int:
    """Bytes of the blob: the extents' lengths added up."""
    return sum(length for _, length in extents)


def valid(extents: Extents, size: int) -> bool:
    """Whether `extents` is a data map of a file of `size` bytes: in order, not empty,
    not touching or overlapping, inside the file."""
    end = -1
    for off, length in extents:
        if length <= 0 or off <= end or off + length > size:
            return False
        end = off + length
    return True


def tidy(extents: Sequence[tuple[int, int]], size: int, limit: int = MAX_EXTENTS) -> Extents:
    """The map as a band stores it: every extent widened to whole 512-byte blocks (cut at
    `size`), touching ones joined, and at most `limit` of them (holes shorter than a
    doubling threshold are read as data, zeros, until few enough are left).

    Blocks, because GNU tar pads each extent's data to a tar block: with every extent but
    one that ends the file a whole number of blocks long, the data extents lie back to
    back in the member exactly as in the blob (filesystems report holes in whole
    filesystem blocks, so this normally changes nothing). The limit keeps the map small
    in the band's tar header; a file fragmented into many holes costs a few more bytes."""
    out = _joined(
        ((off - off % ALIGN, min(size, -(-(off + length) // ALIGN) * ALIGN)) for off, length in extents), 0
    )
    gap = 4096
    while len(out) > limit:
        out, gap = _joined(((off, off + length) for off, length in out), gap), gap * 2
    return out


def _joined(ranges: Iterable[tuple[int, int]], gap: int) -> Extents:
    """(start, end) ranges in order → extents, joining those less than `gap` apart."""
    merged: list[list[int]] = []
    for start, end in ranges:
        if end <= start:
            continue
        if merged and start - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((start, end - start) for start, end in merged)


def holes(extents: Extents, size: int) -> Extents:
    """The (offset, length) ranges of a file of `size` bytes that `extents` leaves out."""
    out: list[tuple[int, int]] = []
    pos = 0
    for off, length in extents:
        if off > pos:
            out.append((pos, off - pos))
        pos = off + length
    if size > pos:
        out.append((pos, size - pos))
    return tuple(out)


def pieces(extents: Extents, offset: int, length: int) -> Iterator[tuple[int, int | None]]:
    """The range [offset, offset+length) of the file as consecutive (length, blob offset)
    pieces; blob offset None for a piece of a hole (zeros). The caller clamps the range
    to the file's size."""
    pos, end, blob_pos = offset, offset + length, 0
    for off, n in extents:
        if pos >= end:
            return
        if off + n <= pos:
            blob_pos += n
            continue
        if off > pos:
            hole = min(off, end) - pos
            yield hole, None
            pos += hole
            if pos >= end:
                return
        take = min(off + n, end) - pos
        yield take, blob_pos + (pos - off)
        pos += take
        blob_pos += n
    if pos < end:
        yield end - pos, None


class BlobPlaces:
    """Where the bytes of a sparse file's blob lie in the file (the inverse of `pieces`)."""

    def __init__(self, extents: Extents) -> None:
        self.extents = extents
        self.starts: list[int] = []  # blob offset of each extent's first byte
        self.size = 0
        for _, length in extents:
            self.starts.append(self.size)
            self.size += length

    def ranges(self, blob_offset: int, length: int) -> Iterator[tuple[int, int]]:
        """(file offset, length) of each piece of the blob range [blob_offset, +length)."""
        i = bisect.bisect_right(self.starts, blob_offset) - 1
        while length > 0 and 0 <= i < len(self.extents):
            off, n = self.extents[i]
            inside = blob_offset - self.starts[i]
            take = min(n - inside, length)
            yield off + inside, take
            blob_offset, length, i = blob_offset + take, length - take, i + 1
