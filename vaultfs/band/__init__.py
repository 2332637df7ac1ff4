"""THE band format: seekable zstd frames over a POSIX pax tar stream (docs/band-format.md).

A band file is::

    zstd frame 0 | zstd frame 1 | ... | catalog frame | seek table (skippable frame)

The concatenated decompressed frames are one pax tar stream: one regular-file member per
blob, then the member ``.vaultfs/catalog.json`` and tar's end of archive, so
``zstd -dc band | tar -x`` restores it. The package, one part of the format per module:

* `tar`: member headers (ustar + pax records), parsing one; `MemberMeta`.
* `frames`: `Frame`, the seek table (encode, read, check against the band's size),
  `frames_from_sizes`, strict decoding of frames.
* `compression`: the compression policy: frame size default, levels, the probe for
  incompressible frames, the match finder for binary frames; per-thread zstd contexts.
* `catalog`: the catalog member (its JSON, its last frame, parsing both), `BlobLocation`,
  band ids.
* `writer`: `BandWriter` and its threads, `ClosedBand`, `reopen_closed`, `sync_band`.
* `reader`: `BandReader` (random access, verified on read, frame cache) and `ReadAhead`
  (the threads that decompress frames ahead of sequential readers).
* `sidecar`: the sidecar object beside a band in the store (encode, decode, its frames
  and blobs).
* `salvage`: reading a damaged band front to back (frames found by their headers, the tar
  stream resynchronised after a hole) for the rebuild ladder's scans.
* `scan`: `scan_band_file`, a whole band file checked front to back (its SHA-256, frames,
  every member re-hashed against its catalog), strict for ``check --read-data`` or
  salvaging for the rebuild ladder; built on `salvage`.
* `direct_file`: `BandFile`, appending a band to disk with ``O_DIRECT`` where possible.

Callers use the names re-exported here (``from vaultfs import band as bandfmt``); each is
imported from its module on first use, so a reader does not load the writer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time the names are imported on first use (`__getattr__`)
    from vaultfs.band.catalog import (
        CATALOG_FORMAT,
        CATALOG_MEMBER,
        BlobLocation,
        frame_levels,
        level_runs,
        levels_from_catalog,
        new_band_id,
    )
    from vaultfs.band.compression import (
        CHEAP_LEVEL,
        DEFAULT_LEVEL,
        FRAME_SIZE_DEFAULT,
        INCOMPRESSIBLE_RATIO,
        SAMPLE_SLICE,
        SAMPLE_SLICES,
        TEXT_LIKE_RATIO,
        is_incompressible,
        probe_ratio,
    )
    from vaultfs.band.frames import (
        FRAME_SIZE_MAX,
        SEEKABLE_MAGIC,
        SKIPPABLE_MAGIC,
        Frame,
        decompress_frames,
        encode_seek_table,
        frames_for_range,
        frames_from_sizes,
        read_seek_table,
        seek_table_length,
    )
    from vaultfs.band.reader import FRAME_CACHE_BYTES, PREFETCH_THREADS, TAIL_READ, BandReader, ReadAhead
    from vaultfs.band.salvage import (
        ZSTD_MAGIC,
        SalvagedMember,
        salvage_frame_prefix,
        salvage_frames,
        salvage_members,
        zstd_frame_size,
    )
    from vaultfs.band.scan import ScannedBand, scan_band_file
    from vaultfs.band.sidecar import decode_sidecar, encode_sidecar, sidecar_blobs, sidecar_frames
    from vaultfs.band.tar import MemberMeta, member_header
    from vaultfs.band.writer import (
        FRAMES_AHEAD,
        TRIM_EVERY_FRAMES,
        BandWriter,
        ClosedBand,
        ContentChanged,
        ReadInto,
        check_member_name,
        reopen_closed,
        sync_band,
    )

__all__ = [
    "CATALOG_FORMAT",
    "CATALOG_MEMBER",
    "CHEAP_LEVEL",
    "DEFAULT_LEVEL",
    "FRAMES_AHEAD",
    "FRAME_CACHE_BYTES",
    "FRAME_SIZE_DEFAULT",
    "FRAME_SIZE_MAX",
    "INCOMPRESSIBLE_RATIO",
    "PREFETCH_THREADS",
    "SAMPLE_SLICE",
    "SAMPLE_SLICES",
    "SEEKABLE_MAGIC",
    "SKIPPABLE_MAGIC",
    "TAIL_READ",
    "TEXT_LIKE_RATIO",
    "TRIM_EVERY_FRAMES",
    "ZSTD_MAGIC",
    "BandReader",
    "BandWriter",
    "BlobLocation",
    "ClosedBand",
    "ContentChanged",
    "Frame",
    "MemberMeta",
    "ReadAhead",
    "ReadInto",
    "SalvagedMember",
    "ScannedBand",
    "check_member_name",
    "decode_sidecar",
    "decompress_frames",
    "encode_seek_table",
    "encode_sidecar",
    "frame_levels",
    "frames_for_range",
    "frames_from_sizes",
    "is_incompressible",
    "level_runs",
    "levels_from_catalog",
    "member_header",
    "new_band_id",
    "probe_ratio",
    "read_seek_table",
    "reopen_closed",
    "salvage_frame_prefix",
    "salvage_frames",
    "salvage_members",
    "scan_band_file",
    "seek_table_length",
    "sidecar_blobs",
    "sidecar_frames",
    "sync_band",
    "zstd_frame_size",
]

# Where each name lives. A name's module is imported when the name is first asked for, not
# with the package: `restore fetch` reads bands and needs neither the writer (its threads,
# ctypes, the malloc tuning) nor the salvaging scanner, ~15 ms of its start-up.
_NAMES = {
    "catalog": (
        "CATALOG_FORMAT",
        "CATALOG_MEMBER",
        "BlobLocation",
        "frame_levels",
        "level_runs",
        "levels_from_catalog",
        "new_band_id",
    ),
    "compression": (
        "CHEAP_LEVEL",
        "DEFAULT_LEVEL",
        "FRAME_SIZE_DEFAULT",
        "INCOMPRESSIBLE_RATIO",
        "SAMPLE_SLICE",
        "SAMPLE_SLICES",
        "TEXT_LIKE_RATIO",
        "is_incompressible",
        "probe_ratio",
    ),
    "frames": (
        "FRAME_SIZE_MAX",
        "SEEKABLE_MAGIC",
        "SKIPPABLE_MAGIC",
        "Frame",
        "decompress_frames",
        "encode_seek_table",
        "frames_for_range",
        "frames_from_sizes",
        "read_seek_table",
        "seek_table_length",
    ),
    "reader": ("FRAME_CACHE_BYTES", "PREFETCH_THREADS", "TAIL_READ", "BandReader", "ReadAhead"),
    "salvage": (
        "ZSTD_MAGIC",
        "SalvagedMember",
        "salvage_frame_prefix",
        "salvage_frames",
        "salvage_members",
        "zstd_frame_size",
    ),
    "scan": ("ScannedBand", "scan_band_file"),
    "sidecar": ("decode_sidecar", "encode_sidecar", "sidecar_blobs", "sidecar_frames"),
    "tar": ("MemberMeta", "member_header"),
    "writer": (
        "FRAMES_AHEAD",
        "TRIM_EVERY_FRAMES",
        "BandWriter",
        "ClosedBand",
        "ContentChanged",
        "ReadInto",
        "check_member_name",
        "reopen_closed",
        "sync_band",
    ),
}
_HOME = {name: module for module, names in _NAMES.items() for name in names}

if not TYPE_CHECKING:  # for mypy the names are the imports above; a typo stays an error

    def __getattr__(name: str) -> object:
        module = _HOME.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
