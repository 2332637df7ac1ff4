"""The preview object: a band's preview ranges, kept in STANDARD beside it (``bands/<id>.preview``).

Layout (docs/band-format.md, "Preview objects")::

    range bytes, back to back | index (canonical JSON) | trailer (44 bytes)

    trailer = SHA-256 of the index (32) | u32 LE index length | magic b"VFSPRV01"

The index is ``{"band": <id>, "blobs": {"<blob sha256 hex>": [[file_offset, length,
data_offset, "<sha256 hex of the range>"], ...]}, "format": 1}``: for each blob the
band stores, the byte ranges of the file kept (sorted, not touching), each with where its
bytes lie in this object and their own SHA-256. The bytes are the file's real bytes,
uncompressed, so a reader fetches exactly one range with one ranged GET and checks it on
its own. The index is at the end (as the band's catalog is) so the object can be written
in one pass while the band fills.

The writer streams to a spool file; the reader parses a tail (`parse_trailer`,
`parse_index`). Every failure is `CorruptionError`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vaultfs.errors import CorruptionError

PREVIEW_FORMAT = 1
PREVIEW_MAGIC = b"VFSPRV01"
TRAILER = struct.Struct("<32sI8s")
INDEX_MAX = 256 * 1024 * 1024  # a larger index is damage, not a band's


@dataclass(frozen=True, slots=True)
class PreviewRange:
    """One kept range of a file: [file_offset, file_offset+length) of the file's bytes,
    at `data_offset` in the preview object, with its SHA-256."""

    file_offset: int
    length: int
    data_offset: int
    sha256: bytes

    @property
    def end(self) -> int:
        return self.file_offset + self.length


class PreviewWriter:
    """Writes one band's preview object to a spool file, blob by blob."""

    def __init__(self, path: Path, band: str) -> None:
        self.path = path
        self.band = band
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by finish/abort
        self._index: dict[str, list[list[object]]] = {}
        self.data_bytes = 0  # range bytes written (what the snapshot reports)

    def add(self, blob: bytes, ranges: list[tuple[int, bytes, bytes | None]]) -> None:
        """The ranges (file offset, bytes, their SHA-256 if known) kept of `blob`'s file."""
        entries: list[list[object]] = []
        for offset, data, digest in ranges:
            sha = digest if digest is not None else hashlib.sha256(data).digest()
            entries.append([offset, len(data), self.data_bytes, sha.hex()])
            self._file.write(data)
            self.data_bytes += len(data)
        if entries:
            self._index[blob.hex()] = entries

    @property
    def empty(self) -> bool:
        return not self._index

    def finish(self) -> Path:
        """Append the index and trailer; the object is complete (not fsynced: it is
        uploaded with its band, and a crash before that drops both)."""
        index = encode_index(self.band, self._index)
        self._file.write(index)
        self._file.write(TRAILER.pack(hashlib.sha256(index).digest(), len(index), PREVIEW_MAGIC))
        self._file.close()
        return self.path

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def encode_index(band: str, blobs: dict[str, list[list[object]]]) -> bytes:
    doc = {"band": band, "blobs": blobs, "format": PREVIEW_FORMAT}
    return json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode()


def parse_trailer(tail: bytes, object_size: int, label: str) -> tuple[int, bytes]:
    """(index length, index SHA-256) from the object's last bytes (at least `TRAILER.size`)."""
    if len(tail) < TRAILER.size:
        raise CorruptionError(f"preview object of band {label}: too short")
    digest, length, magic = TRAILER.unpack(tail[-TRAILER.size :])
    if magic != PREVIEW_MAGIC or length > min(INDEX_MAX, object_size - TRAILER.size):
        raise CorruptionError(f"preview object of band {label}: bad trailer")
    return length, digest


def parse_index(
    index: bytes, digest: bytes, data_size: int, label: str
) -> dict[bytes, tuple[PreviewRange, ...]]:
    """The verified index: blob id → its ranges. `data_size` is the object's size less
    index and trailer: every range must lie inside it."""
    if hashlib.sha256(index).digest() != digest:
        raise CorruptionError(f"preview object of band {label}: index fails its SHA-256")
    try:
        doc = json.loads(index)
        if doc.get("format") != PREVIEW_FORMAT or doc.get("band") != label:
            raise ValueError("not this band's preview object")
        out: dict[bytes, tuple[PreviewRange, ...]] = {}
        for blob, entries in doc["blobs"].items():
            ranges = tuple(PreviewRange(int(o), int(n), int(d), bytes.fromhex(s)) for o, n, d, s in entries)
            for r in ranges:
                if (
                    r.file_offset < 0
                    or r.length <= 0
                    or r.data_offset < 0
                    or r.data_offset + r.length > data_size
                ):
                    raise ValueError("range outside the object")
            out[bytes.fromhex(blob)] = ranges
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CorruptionError(f"preview object of band {label}: bad index: {e}") from e
    return out


def read_preview_index(f: BinaryIO, size: int, label: str) -> dict[bytes, tuple[PreviewRange, ...]]:
    """The verified index of the whole preview object open as `f` (`size` bytes), read from
    its tail (`vaultfs recompress` copies a band's ranges so). CorruptionError if damaged."""
    if size < TRAILER.size:
        raise CorruptionError(f"preview object of band {label}: too short")
    f.seek(size - TRAILER.size)
    length, digest = parse_trailer(f.read(TRAILER.size), size, label)
    end = size - TRAILER.size
    f.seek(end - length)
    return parse_index(f.read(length), digest, end - length, label)
