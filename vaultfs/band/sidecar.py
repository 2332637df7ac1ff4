"""The sidecar: a small object beside a band in the store that describes it.

zstd (with checksum) of canonical JSON holding the band's catalog keys plus ``band_size``,
``band_sha256`` and ``frames`` (``[[compressed_size, uncompressed_size], ...]``, the seek
table's entries), stored as ``bands/<id>.catalog.zst`` in S3 STANDARD. With it, a reader
needs no tail read for the seek table, and an index rebuild need not read bands (which
may be in Deep Archive).
"""

from __future__ import annotations

import json
from typing import Any

import zstandard

from vaultfs.band.catalog import CATALOG_FORMAT
from vaultfs.band.compression import compressor, decompressor
from vaultfs.band.frames import Frame, frames_from_sizes
from vaultfs.band.writer import ClosedBand
from vaultfs.errors import CorruptionError


def encode_sidecar(band: ClosedBand) -> bytes:
    """zstd-compressed JSON: the catalog's keys plus band_size, band_sha256 and frames
    ([[compressed_size, uncompressed_size], ...], the seek table's entries)."""
    doc = json.loads(band.catalog)
    doc.update(band_size=band.size, band_sha256=band.sha256.hex(),
               frames=[[f.compressed_size, f.uncompressed_size] for f in band.frames])
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
