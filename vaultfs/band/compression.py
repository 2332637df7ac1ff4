"""The compression policy: which zstd settings each frame gets, and how big frames are.

Per frame, `compress_frame` probes the data (`probe_ratio`: SAMPLE_SLICES slices at level
1) and picks:

* ``CHEAP_LEVEL`` for incompressible frames (the probe shrinks by less than 3 %): already
  compressed media cost almost nothing to pass through;
* at the default level, for partly compressible binary frames (probe ratio above
  ``TEXT_LIKE_RATIO``), the single-table ``fast`` match finder (`binary_compressor`):
  level 3's ratio ~30 % faster;
* otherwise the configured level; with ``fixed_window`` (levels chosen per frame by
  ``compression_level = "auto"``), a level above ``DEFAULT_LEVEL`` keeps level 3's
  window (`capped_compressor`), so no frame needs more memory to decompress than a
  level-3 frame does, whatever level it got.

docs/band-format.md has the measurements behind each threshold. Compressor and
decompressor objects are kept per thread (zstd contexts are not thread-safe, and making
one per frame costs more than compressing a small frame).
"""

from __future__ import annotations

import threading

import zstandard

FRAME_SIZE_DEFAULT = 4 * 1024 * 1024
DEFAULT_LEVEL = 3
CHEAP_LEVEL = -1  # for incompressible frames; see docs/band-format.md for the measurements
SAMPLE_SLICES, SAMPLE_SLICE = 4, 16 * 1024  # incompressibility probe: 4 x 16 KiB at level 1
INCOMPRESSIBLE_RATIO = 0.97  # probe must shrink by more than 3 % to use the configured level
TEXT_LIKE_RATIO = 0.5  # probe ratio below this: text-like, zstd's own level 3 compresses best
FIXED_WINDOW_LOG = 21  # level 3's window (2 MiB): every level of "auto" keeps it

_local = threading.local()


def compressor(level: int, checksum: bool = True) -> zstandard.ZstdCompressor:
    """This thread's compressor for `level` (content size always written)."""
    cache: dict[tuple[int, bool], zstandard.ZstdCompressor] = _local.__dict__.setdefault("c", {})
    if (level, checksum) not in cache:
        cache[level, checksum] = zstandard.ZstdCompressor(
            level=level, write_checksum=checksum, write_content_size=True
        )
    return cache[level, checksum]


def decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor."""
    if not hasattr(_local, "d"):
        _local.d = zstandard.ZstdDecompressor()
    d: zstandard.ZstdDecompressor = _local.d
    return d


def probe_ratio(data: bytes | bytearray | memoryview) -> float | None:
    """Compressed/original size of SAMPLE_SLICES slices of `data` at level 1 (None: too small)."""
    n = len(data)
    if n < SAMPLE_SLICES * SAMPLE_SLICE:
        return None
    step = (n - SAMPLE_SLICE) // (SAMPLE_SLICES - 1)
    sample = b"".join(data[i * step : i * step + SAMPLE_SLICE] for i in range(SAMPLE_SLICES))
    return len(compressor(1, False).compress(sample)) / len(sample)


def is_incompressible(data: bytes | bytearray | memoryview) -> bool:
    """Probe: do SAMPLE_SLICES slices of `data`, compressed at level 1, shrink by < 3 %?"""
    ratio = probe_ratio(data)
    return ratio is not None and ratio > INCOMPRESSIBLE_RATIO


def binary_compressor() -> zstandard.ZstdCompressor:
    """Level 3's ratio on partly compressible binary data (raw sensor data), ~30 % faster.

    zstd's level 3 (``dfast``) spends its time on a second hash table that pays on text,
    not on sensor samples; the single-table ``fast`` finder with 5-byte matches and
    level 3's table sizes compresses them as well (docs/band-format.md has the numbers).
    """
    c = _local.__dict__.get("binary")
    if c is None:
        params = zstandard.ZstdCompressionParameters(
            strategy=zstandard.STRATEGY_FAST,
            window_log=21,
            hash_log=17,
            chain_log=16,
            search_log=1,
            min_match=5,
            write_checksum=1,
            write_content_size=1,
        )
        c = _local.binary = zstandard.ZstdCompressor(compression_params=params)
    return c


def capped_compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for `level` with level 3's window (``FIXED_WINDOW_LOG``):
    the level's search (strategy, search depth, match lengths) on a window that does not
    grow, its tables no larger than that window needs."""
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("capped", {})
    if level not in cache:
        base = zstandard.ZstdCompressionParameters.from_level(level)
        params = zstandard.ZstdCompressionParameters.from_level(
            level,
            window_log=FIXED_WINDOW_LOG,
            chain_log=min(base.chain_log, FIXED_WINDOW_LOG + 1),
            hash_log=min(base.hash_log, FIXED_WINDOW_LOG + 1),
            write_checksum=1,
            write_content_size=1,
        )
        cache[level] = zstandard.ZstdCompressor(compression_params=params)
    return cache[level]


def compress_frame(
    data: bytes | bytearray | memoryview, level: int, *, fixed_window: bool = False
) -> tuple[bytes, int]:
    """One frame compressed as the policy above says: (zstd frame, level it was given)."""
    if level > CHEAP_LEVEL:
        ratio = probe_ratio(data)
        if ratio is not None and ratio > INCOMPRESSIBLE_RATIO:
            level = CHEAP_LEVEL
        elif level == DEFAULT_LEVEL and ratio is not None and ratio > TEXT_LIKE_RATIO:
            return binary_compressor().compress(data), level
    if fixed_window and level > DEFAULT_LEVEL:
        return capped_compressor(level).compress(data), level
    return compressor(level).compress(data), level
