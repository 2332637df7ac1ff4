"""Preview ranges: which bytes of a cold file stay hot, so previews never need a restore.

For each new blob of a cold collection (``[collections.X].preview_head`` > 0) the file
saver keeps, in the band's preview object (`vaultfs.band.preview`, uploaded to STANDARD
beside the band; docs/band-format.md):

* the head: the first ``preview_head`` bytes (MIME sniffing reads the first bytes) of
  every file larger than that; a smaller file is kept whole only with
  ``preview_small_files`` (it is then stored twice: on a tree of many small files that
  costs far more than the heads of the large ones, docs/band-format.md);
* MP4/MOV (top-level boxes, ``ftyp`` first): the ``moov`` box when it is not in the head
  (cameras write it after ``mdat``; players and thumbnailers read it first);
* JPEG: the Exif APP1 segment (at most 64 KiB by the format: its IFDs and the thumbnail
  they point to);
* TIFF-based files (TIFF, CR2, NEF, ARW, DNG): the IFDs of the IFD chain and their SubIFDs
  (their entries and values) and the image data of the smallest images they describe
  (embedded thumbnails and previews), within `EXTRA_MAX` bytes per file.

Parsing is of hostile input: every walk is bounded (`MAX_IFDS`, `MAX_BOXES`,
`MAX_READS` extra preads of at most `READ_MAX` bytes), ranges outside the file are
dropped, and a file that does not parse just keeps its head: `find_ranges` never raises
for bad content. It reads from the head already in memory where it can.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

from vaultfs.band.preview import PreviewWriter
from vaultfs.config import CollectionConfig, Config
from vaultfs.keys import preview_key
from vaultfs.vault import Vault

EXTRA_MAX = 256 * 1024  # bytes per file beyond the head: IFDs, thumbnails, Exif segment
MOOV_MAX = 8 * 1024 * 1024  # a larger moov (hours of video) is not kept
MAX_IFDS = 16
MAX_ENTRIES = 512  # per IFD
MAX_STRIPS = 1024
MAX_BOXES = 64
MAX_READS = 64
READ_MAX = MAX_ENTRIES * 12 + 6
_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_BAD = (ValueError, IndexError, struct.error, OSError)

Read = Callable[[int, int], bytes]  # (offset, length) → bytes of the file
Range = tuple[int, int]  # (offset, length)


def keeps_previews(config: Config, collection: CollectionConfig) -> bool:
    """Whether `collection`'s bands get preview objects: a cold collection with a
    ``preview_head`` on a store that archives bands (an s3:// store with
    ``[s3].archive_class``; elsewhere every band stays readable)."""
    return (
        collection.tier == "cold"
        and collection.preview_head > 0
        and config.store.startswith("s3://")
        and bool(config.s3.archive_class)
    )


class _Reader:
    """Bytes of the file: from the head in memory, else a bounded number of preads."""

    def __init__(self, head: bytes | memoryview, size: int, pread: Read | None) -> None:
        self.head, self.size, self.pread, self.reads = head, size, pread, 0

    def __call__(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("outside the file")
        if offset + length <= len(self.head):
            return bytes(self.head[offset : offset + length])
        if self.pread is None or self.reads >= MAX_READS or length > READ_MAX:
            raise ValueError("read bound reached")
        self.reads += 1
        data = self.pread(offset, length)
        if len(data) != length:
            raise ValueError("short read")
        return data


def find_ranges(
    head: bytes | memoryview,
    size: int,
    head_limit: int,
    pread: Read | None = None,
    *,
    small_files: bool = False,
) -> list[Range]:
    """The ranges of a file of `size` bytes to keep, sorted and merged. A file no larger
    than `head_limit` gets all of it with `small_files`, else none (kept whole it is
    stored twice: docs/band-format.md, "Preview objects"). `head` holds at least the
    file's first `head_limit` bytes (more is used for parsing)."""
    if size <= head_limit:
        return [(0, size)] if small_files and size > 0 else []
    ranges = [(0, head_limit)]
    read = _Reader(head, size, pread)
    extra: list[Range] = []
    try:
        start = bytes(head[:12])
        if start[4:8] == b"ftyp":
            extra = _mp4(read, size)
        elif start[:3] == b"\xff\xd8\xff":
            extra = _jpeg(read, size)
        elif start[:4] in (b"II*\0", b"MM\0*"):
            extra = _tiff(read, 0, size)
    except _BAD:
        extra = []
    return merge(ranges + [(o, n) for o, n in extra if n > 0 and o >= 0 and o + n <= size])


def merge(ranges: list[Range]) -> list[Range]:
    """Sorted, with overlapping and touching ranges joined."""
    out: list[Range] = []
    for offset, length in sorted(ranges):
        if out and offset <= out[-1][0] + out[-1][1]:
            last_offset, last_length = out[-1]
            out[-1] = (last_offset, max(last_length, offset + length - last_offset))
        else:
            out.append((offset, length))
    return out


def _mp4(read: _Reader, size: int) -> list[Range]:
    """The top-level ``moov`` box (within MOOV_MAX)."""
    pos = 0
    for _ in range(MAX_BOXES):
        if pos + 8 > size:
            break
        box_size, kind = struct.unpack(">I4s", read(pos, 8))
        if box_size == 1:
            box_size = struct.unpack(">Q", read(pos + 8, 8))[0]
        elif box_size == 0:
            box_size = size - pos
        if box_size < 8:
            break
        if kind == b"moov":
            return [(pos, box_size)] if box_size <= MOOV_MAX else []
        pos += box_size
    return []


def _jpeg(read: _Reader, size: int) -> list[Range]:
    """The Exif APP1 segment (marker to end), found among the segments before SOS."""
    pos = 2
    for _ in range(MAX_BOXES):
        ff, marker, length = struct.unpack(">BBH", read(pos, 4))
        if ff != 0xFF or marker == 0xDA or length < 2:
            break
        if marker == 0xE1 and read(pos + 4, 6) == b"Exif\0\0":
            return [(pos, 2 + length)]
        pos += 2 + length
    return []


class _Tiff:
    """A TIFF structure at `base` in the file: byte order, IFD entries."""

    def __init__(self, read: _Reader, base: int) -> None:
        self.read, self.base = read, base
        self.order = "<" if read(base, 2) == b"II" else ">"

    def u(self, fmt: str, offset: int) -> tuple[int, ...]:
        n = struct.calcsize(self.order + fmt)
        return struct.unpack(self.order + fmt, self.read(self.base + offset, n))

    def ifd(self, offset: int) -> tuple[dict[int, tuple[int, int, int]], int, Range]:
        """{tag: (type, count, value field offset)}, the next IFD's offset, the IFD's range."""
        (n,) = self.u("H", offset)
        if n == 0 or n > MAX_ENTRIES:
            raise ValueError("bad IFD")
        raw = self.read(self.base + offset + 2, 12 * n + 4)
        entries = {}
        for i in range(n):
            tag, kind, count = struct.unpack(self.order + "HHI", raw[12 * i : 12 * i + 8])
            entries[tag] = (kind, count, offset + 2 + 12 * i + 8)
        (following,) = struct.unpack(self.order + "I", raw[-4:])
        return entries, following, (self.base + offset, 2 + 12 * n + 4)

    def value_at(self, entry: tuple[int, int, int]) -> tuple[int, int]:
        """(offset in the file, size) of an entry's value."""
        kind, count, field_at = entry
        size = _TYPE_SIZES.get(kind, 0) * count
        if size <= 4:
            return self.base + field_at, size
        return self.base + self.u("I", field_at)[0], size

    def numbers(self, entry: tuple[int, int, int]) -> list[int]:
        kind, count, _ = entry
        if kind not in (3, 4, 13) or count > MAX_STRIPS:
            raise ValueError("not offsets")
        at, size = self.value_at(entry)
        return list(struct.unpack(f"{self.order}{count}{'H' if kind == 3 else 'I'}", self.read(at, size)))


def _tiff(read: _Reader, base: int, size: int) -> list[Range]:
    """The IFDs (IFD chain and SubIFDs) with their values, then the smallest images."""
    t = _Tiff(read, base)
    queue = [t.u("I", 4)[0]]
    seen: set[int] = set()
    structure: list[Range] = []
    images: list[list[Range]] = []
    while queue and len(seen) < MAX_IFDS:
        offset = queue.pop(0)
        if offset in seen or offset <= 0:
            continue
        seen.add(offset)
        entries, following, where = t.ifd(offset)
        structure.append(where)
        structure += [v for v in map(t.value_at, entries.values()) if v[1] > 4]
        queue.append(following)
        if 0x14A in entries:  # SubIFDs
            queue += t.numbers(entries[0x14A])
        images.append(_image(t, entries))
    kept: list[Range] = []
    budget = EXTRA_MAX
    for part in [[r] for r in sorted(structure, key=lambda r: r[1])] + sorted(images, key=_total):
        total = _total(part)
        if total > budget:
            break
        kept += part
        budget -= total
    return kept


def _image(t: _Tiff, entries: dict[int, tuple[int, int, int]]) -> list[Range]:
    """The image data an IFD describes: a JPEG (0x201/0x202) or strips (0x111/0x117)."""
    try:
        if 0x201 in entries and 0x202 in entries:
            return [(t.base + t.numbers(entries[0x201])[0], t.numbers(entries[0x202])[0])]
        if 0x111 in entries and 0x117 in entries:
            return [
                (t.base + o, n)
                for o, n in zip(t.numbers(entries[0x111]), t.numbers(entries[0x117]), strict=True)
            ]
    except _BAD:
        pass
    return []


def _total(ranges: list[Range]) -> int:
    return sum(n for _, n in ranges) if ranges else EXTRA_MAX + 1


# ---- the file saver's side --------------------------------------------------------------


class PreviewSpool:
    """The preview object of the band being filled, and what the snapshot kept.

    Owned by the `FileSaver` of a cold collection: `open_band` and `close_band` follow
    its band; `add` is called for every blob the band stores. The finished object waits
    in the spool as ``<id>.preview.part`` until the uploader puts it on the store just
    before the band (`upload_preview`); a run that fails leaves it to `recover_spool`,
    which deletes ``.part`` files (such a band then has no previews).
    """

    def __init__(self, vault: Vault, head_limit: int, small_files: bool = False) -> None:
        self.spool_dir = vault.spool_dir
        self.head_limit = head_limit
        self.small_files = small_files
        self.writer: PreviewWriter | None = None
        self.bytes_kept = 0  # range bytes of this run's preview objects

    def open_band(self, band: str) -> None:
        self.writer = PreviewWriter(spool_path(self.spool_dir, band), band)

    def add(
        self,
        blob: bytes,
        size: int,
        head: bytes | memoryview,
        pread: Read | None,
        unchanged: Callable[[], bool] | None = None,
    ) -> None:
        """Keep the ranges of a new blob of `size` bytes. `head` is the file's content
        (a small file) or its first bytes; `pread` reads the rest (a large file), and
        `unchanged` says afterwards whether the file is still the one packed. The blob is
        in the band already: a failed read costs its previews only, a failed write to the
        spool the band's preview object (its files then behave as files without previews)."""
        writer = self.writer
        if writer is None:
            return
        try:
            ranges = find_ranges(head, size, self.head_limit, pread, small_files=self.small_files)
            kept = _range_bytes(ranges, head, pread)
            if not kept or (unchanged is not None and not unchanged()):
                return
        except OSError:
            return
        try:
            writer.add(blob, [(offset, data, None) for offset, data in kept])
        except OSError:
            writer.abort()
            self.writer = None
            return
        self.bytes_kept += sum(len(d) for _, d in kept)

    def close_band(self) -> None:
        """Finish the band's preview object (none when nothing was kept)."""
        writer, self.writer = self.writer, None
        if writer is None:
            return
        if writer.empty:
            writer.abort()
        else:
            writer.finish()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def _range_bytes(
    ranges: list[Range], head: bytes | memoryview, pread: Read | None
) -> list[tuple[int, bytes]]:
    """(offset, bytes) of each range: from `head`, else read; [] if the file is shorter."""
    out = []
    for offset, length in ranges:
        if offset + length <= len(head):
            data = bytes(head[offset : offset + length])
        else:
            data = pread(offset, length) if pread is not None else b""
            if len(data) != length:
                return []  # the file shrank: its blob will be refused anyway
        out.append((offset, data))
    return out


PREVIEW_SUFFIX = ".preview"  # a finished preview object in the spool (`vaultfs recompress`)


def spool_path(spool_dir: Path, band: str) -> Path:
    return spool_dir / f"{band}{PREVIEW_SUFFIX}.part"


def upload_preview(vault: Vault, band: str) -> None:
    """The uploader thread, before the band: put the band's finished preview object on the
    store and delete it from the spool."""
    path = spool_path(vault.spool_dir, band)
    if not path.exists():
        return
    put_preview(vault, band, path)
    path.unlink()


def put_preview(vault: Vault, band: str, path: Path) -> None:
    """Put the preview object at `path` on the store as `band`'s (STANDARD: it is never
    archived)."""
    with path.open("rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").digest()  # the store checks the upload with it
    vault.store.put_file(preview_key(band), path, sha256=sha256, storage_class="STANDARD")


def pread_of(fd: int) -> Read:
    return lambda offset, length: os.pread(fd, length, offset)
