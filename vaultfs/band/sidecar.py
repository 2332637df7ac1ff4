"""The sidecar: a small object beside a band in the store that describes it.

zstd (with checksum) of canonical JSON holding the band's catalog keys plus ``band_size``,
``band_sha256`` and ``frames`` (``[[compressed_size, uncompressed_size], ...]``, the seek
table's entries), stored as ``bands/<id>.catalog.zst`` in S3 STANDARD. With it, a reader
needs no tail read for the seek table, and an index rebuild need not read bands (which
may be in Deep Archive).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import zstandard

from vaultfs.band.catalog import CATALOG_FORMAT
from vaultfs.band.compression import compressor, decompressor
from vaultfs.band.frames import Frame, frames_from_sizes
from vaultfs.errors import CorruptionError


def encode_sidecar(catalog: bytes, size: int, sha256: bytes, frames: Sequence[Frame]) -> bytes:
    """zstd-compressed JSON: the catalog's keys plus band_size, band_sha256 and frames
    ([[compressed_size, uncompressed_size], ...], the seek table's entries). The one
    encoder: a snapshot writes it from a `ClosedBand`, a rebuild rewrites a damaged one
    from the band's own catalog and its `BandInfo`."""
    doc = json.loads(catalog)
    doc.update(
        band_size=size,
        band_sha256=sha256.hex(),
        frames=[[f.compressed_size, f.uncompressed_size] for f in frames],
    )
    text = json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return compressor(3).compress(text.encode("ascii"))


def decode_sidecar(data: bytes) -> dict[str, Any]:
    """Parse a sidecar; CorruptionError when it does not decompress, verify or parse."""
    try:
        doc = json.loads(decompressor().decompress(data, allow_extra_data=False))
        if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
            raise ValueError("not a band sidecar")
        sidecar_frames(doc)
    except (zstandard.ZstdError, ValueError, UnicodeDecodeError) as e:
        raise CorruptionError(f"bad band sidecar: {e}") from e
    return doc


def sidecar_frames(doc: dict[str, Any]) -> tuple[Frame, ...]:
    """The frames listed in a decoded sidecar (ValueError if malformed)."""
    sizes: list[tuple[int, int]] = []
    try:
        for csize, usize in doc["frames"]:
            if not (isinstance(csize, int) and isinstance(usize, int) and csize > 0 and usize >= 0):
                raise ValueError("bad frame entry")
            sizes.append((csize, usize))
    except (KeyError, TypeError) as e:
        raise ValueError(f"bad frames: {e}") from e
    return frames_from_sizes(sizes)


def sidecar_blobs(doc: dict[str, Any]) -> list[tuple[bytes, int, int]]:
    """(sha256, offset, size) of every blob a decoded sidecar lists (KeyError, TypeError or
    ValueError if malformed)."""
    return [(bytes.fromhex(b["sha256"]), int(b["offset"]), int(b["size"])) for b in doc["blobs"]]
